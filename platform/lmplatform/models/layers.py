"""Layers shared by the families: attention through SDPA, the scalar mix, task heads.

Nothing here imports Ray, DeepSpeed or torch.distributed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def init_weights(module: nn.Module, std: float) -> None:
    """BERT / GPT-2 initialisation: N(0, std) weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout; on CPU with 16-bit random draws, 4 per 64-bit word.

    CPU `bernoulli_` / `rand` produce ~250M numbers/s, which made dropout ~15 % of a BERT-mini
    training step here. One full-range int64 draw holds 64 random bits: its four 16-bit halves
    are four uniform draws, read in place (a view, no copy), so the same mask costs a quarter
    of the generator calls. Keep probability is exact to 1/65536. GPUs use PyTorch's own
    (Philox) dropout.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    draws = words.view(torch.int16)[:n].view(x.shape)  # the halves' order does not matter
    keep = draws >= (-32768 + round(p * 65536))
    # the mask in x's dtype, made once: `x * keep` converted the bool mask in the forward and
    # again in the backward (12 % of the step's copies). In 16 bits the scale stays apart:
    # folded into the mask it would round (1/0.9 -> 1.109), shrinking every dropout's output
    if x.dtype in (torch.float32, torch.float64):
        return x * (keep * (1.0 / (1.0 - p))).to(x.dtype)
    return (x * keep.to(x.dtype)).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


@dataclass
class KVCache:
    """One layer's keys and values of the positions seen so far (incremental decoding)."""

    k: torch.Tensor | None = None  # (B, nh, t, hs)
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection and SDPA's fused kernels."""

    def __init__(self, hidden: int, heads: int, dropout: float, bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=bias)
        self.out = nn.Linear(hidden, hidden, bias=bias)
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
    ):
        """`cache` (causal decoding, no padding mask): x holds the positions after the cached
        ones — the whole prompt first, then one token at a time — and the cache grows."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, T, C)
        q, k, v = (
            t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, T, hs)
        if cache is not None:
            if cache.k is not None:
                if T != 1:
                    raise ValueError("after the prompt, a cached step takes one position")
                k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
                causal = False  # one new position attends to every cached one
            cache.k, cache.v = k, v
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            # SDPA has no fused CPU kernel with dropout (it falls back to this same math, with
            # the slow dropout); spelled out here so attention dropout uses the fast one
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.heads))  # (B, nh, T, T)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            if causal:
                att = att.masked_fill(
                    torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf")
                )
            att = dropout(torch.softmax(att, dim=-1), self.dropout, True)
            y = att.to(v.dtype) @ v  # (B, nh, T, hs)
            return self.out(y.transpose(1, 2).reshape(B, T, C))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,  # (B, 1, 1, T) bool, True = attend; None when nothing is padded
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class LayerStack:
    """Mixin of a module that runs a stack of layers: `run_layer` checkpoints each layer's
    activations when `activation_checkpointing` is on (`set_activation_checkpointing`)."""

    activation_checkpointing = False

    def run_layer(self, layer: nn.Module, *args):
        """`layer(*args)`; while training with checkpointing on, its activations are not kept
        but recomputed in the backward (the RNG state too, so dropout draws the same masks):
        a stack then holds about one layer's activations, for about a third more compute."""
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)


def set_activation_checkpointing(model: nn.Module, on: bool = True) -> int:
    """Turn checkpointing on (or off) in every layer stack of `model` (wrappers such as DDP or a
    DeepSpeed engine included); returns how many stacks there are."""
    stacks = [m for m in model.modules() if isinstance(m, LayerStack)]
    for m in stacks:
        m.activation_checkpointing = on
    return len(stacks)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1/0 -> (B, 1, 1, T) bool for SDPA; None when nothing is padded (faster kernels).

    Only a CPU mask is looked at: on an accelerator `bool(m.all())` would wait for the device
    every forward, so a caller that knows nothing is padded passes None (the pretraining
    collators do)."""
    if attention_mask is None:
        return None
    m = attention_mask.bool()
    if m.device.type == "cpu" and bool(m.all()):
        return None
    return m[:, None, None, :]


class ScalarMix(nn.Module):
    """ELMo's learned mix of layers: gamma * sum_j softmax(w)_j * h_j."""

    def __init__(self, n: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        w = torch.softmax(self.weights, dim=0)
        return self.gamma * sum(wi * h for wi, h in zip(w, layers))


@dataclass
class Encoded:
    """What an encoder gives a task head: per-layer hidden states (last = top) and a pooled vector."""

    layers: list[torch.Tensor]  # each (B, T, H)
    pooled: torch.Tensor | None  # (B, H) or None: the head pools itself


def masked_mean(h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return h.mean(dim=1)
    m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def last_token(h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Hidden state of the last real token of each row (right padding)."""
    if attention_mask is None:
        return h[:, -1]
    idx = attention_mask.long().sum(dim=1).clamp(min=1) - 1  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), idx]


CHUNK_LOGITS = 1 << 27
"""Logits the fused cross-entropy holds at once on an accelerator, in elements: 512 MiB in fp32
(and as much again for their softmax while a chunk is worked on). Whole, GPT-base's logits for
a batch of 32 x 1023 tokens would be 6.6 GB (and as much again for their gradient)."""

CPU_CHUNK_ROWS = 256
"""Most rows per chunk on CPU, where a chunk's logits should stay in cache across its passes."""


def chunk_rows(rows: int, vocab: int, device_type: str, budget: int = CHUNK_LOGITS) -> int:
    """Rows per chunk of the fused cross-entropy: the fewest chunks of at most `budget` logits
    (on CPU at most `CPU_CHUNK_ROWS` rows), all of one size (no small tail).

    On an accelerator every chunk re-reads the whole (V, C) weight and launches its own
    kernels, a cost that grows with the number of chunks, not the rows (fixed 256-row chunks
    made 128 of them per GPT-base micro-batch). On CPU, measured on 2 cores with BERT-mini
    shapes in bf16, 256-row chunks ran the loss and its gradients 1.3-1.5x faster than one
    chunk of 614 or 4,096 rows."""
    most = CPU_CHUNK_ROWS if device_type == "cpu" else max(1, budget // vocab)
    chunks = max(1, -(-rows // most))
    return -(-rows // chunks)


def _block_rows(rows: int, vocab: int, chunk: int, device_type: str) -> int:
    """Rows whose logit gradients are kept (in the matmul dtype) before they go through the
    two gradient matmuls. On CPU all of them where they fit the budget: one (V, C) weight
    gradient instead of one partial per chunk, each cast and added (a third of a BERT-mini
    step's copies). On an accelerator a chunk: memory is the constraint there."""
    if device_type != "cpu":
        return chunk
    return max(chunk, CHUNK_LOGITS // vocab // chunk * chunk)


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `h @ W.T + b`, computed chunk by chunk with its gradients in one pass.

    The (N, V) logits are made a chunk of rows at a time (`chunk_rows` sizes it) and turned
    into per-row loss and accuracy and a softmax, from which the logit gradients are written in
    the matmul dtype; every `_block_rows` rows those go through the gradient matmuls. The means
    are taken once at the end; rows whose target is -100 are weighed 0 rather than removed, so
    no step reads a count back from the device. Per chunk it is one fused softmax and two max
    reductions: `logsumexp` and `argmax` were two more passes over the logits each, and slow
    ones on CPU (9 and 7 ms for 256 x 30,522 fp32 where `softmax` takes 3.6 and `amax` 0.7).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, target, chunk: int):
        dev = h.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        with torch.autocast(dev, enabled=False):
            w, hh = weight.to(dtype), h.to(dtype)
            b = bias.float() if bias is not None else None
            keep = target != -100  # (N,)
            kept = keep.sum().clamp(min=1)
            share = keep.float() / kept  # (N,) each row's part of the mean
            tgt = torch.where(keep, target, 0)  # (N,) an ignored row reads column 0, weighed 0
            N = h.shape[0]
            row_loss = torch.empty(N, dtype=torch.float32, device=h.device)
            row_hit = torch.empty(N, dtype=torch.bool, device=h.device)
            grads = _CEGrads(h, weight, bias, dtype) if any(ctx.needs_input_grad[:3]) else None
            block = _block_rows(N, w.shape[0], chunk, dev)
            # one chunk's logits and softmax, reused by every chunk: fresh ones each chunk
            # were page-faulted in anew (glibc mmaps blocks this large); two tensors, not one
            # of twice the size, so that each stays under malloc's 32 MiB mmap threshold
            bufs = [torch.empty((min(chunk, N), w.shape[0]), device=h.device) for _ in "lp"]
            for b0 in range(0, N, block):
                g = grads.block(min(block, N - b0)) if grads is not None else None
                for s in range(b0, min(b0 + block, N), chunk):
                    rows = slice(s, min(s + chunk, N))
                    p = _chunk_stats(hh[rows], w, b, tgt[rows], bufs, row_loss[rows], row_hit[rows])
                    if g is not None:
                        grads.fill(g[s - b0 : rows.stop - b0], p, tgt[rows], share[rows])
                if g is not None:
                    grads.flush(g, hh[b0 : b0 + len(g)], w, b0)
            loss = torch.where(keep, row_loss, 0.0).sum() / kept
            acc = (row_hit & keep).sum() / kept
        if grads is not None:
            ctx.save_for_backward(*grads.result(h, weight, bias))
        ctx.mark_non_differentiable(acc)
        return loss, acc

    @staticmethod
    def backward(ctx, grad_loss, _grad_acc):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return (
            grad_h * grad_loss,
            grad_w * grad_loss,
            None if grad_b is None else grad_b * grad_loss,
            None,
            None,
        )


def _chunk_stats(hc, w, b, tc, bufs, row_loss, row_hit) -> torch.Tensor:
    """One chunk's logits into per-row loss and hit (written in place); returns the softmax
    (in `bufs[1]`; `bufs[0]` takes the logits).

    A hit is a target whose logit is the row's largest (a tie counts: the target is among the
    best). logsumexp = max - log(largest probability), which lies in [1/V, 1], so nothing
    underflows."""
    logits, p = bufs[0][: len(hc)], bufs[1][: len(hc)]  # (n, V) fp32 each
    if hc.dtype == torch.float32:
        torch.mm(hc, w.t(), out=logits)
        if b is not None:
            logits += b
    elif b is not None:
        torch.add(hc @ w.t(), b, out=logits)  # widened and biased in one pass
    else:
        logits.copy_(hc @ w.t())
    top = logits.amax(-1)  # (n,)
    target_logit = logits.gather(1, tc[:, None])[:, 0]
    torch.ops.aten._softmax.out(logits, -1, False, out=p)
    row_loss.copy_(top - p.amax(-1).log() - target_logit)
    row_hit.copy_(target_logit >= top)
    return p


class _CEGrads:
    """The fused cross-entropy's gradients: the logit gradients of a block of rows in the
    matmul dtype, then through the projection; weight and bias gradients are summed in fp32
    whatever the matmul dtype when there is more than one block."""

    def __init__(self, h, weight, bias, dtype):
        self.dtype = dtype
        self.grad_h = torch.empty(h.shape, dtype=dtype, device=h.device)
        self.vocab = weight.shape[0]
        self.grad_w: torch.Tensor | None = None
        self.grad_b = None
        if bias is not None:
            self.grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=h.device)

    def block(self, rows: int) -> torch.Tensor:
        return torch.empty((rows, self.vocab), dtype=self.dtype, device=self.grad_h.device)

    def fill(self, g, p, tc, share) -> None:
        """d(mean loss)/d(logits) = (softmax - onehot) * share, into `g` (the chunk's rows)."""
        if self.grad_b is not None:
            self.grad_b += p.t() @ share  # sum over rows of softmax * share: one pass over p
            self.grad_b.index_add_(0, tc, -share)
        p.mul_(share[:, None])  # in place: p is the chunk's buffer
        p[torch.arange(len(tc), device=p.device), tc] -= share
        g.copy_(p)

    def flush(self, g, hb, w, start: int) -> None:
        """The block's logit gradients through the projection."""
        torch.mm(g, w, out=self.grad_h[start : start + len(g)])  # no temporary to copy
        partial = g.t() @ hb  # (V, C)
        if self.grad_w is None:
            self.grad_w = partial
        else:
            self.grad_w = self.grad_w.float().add_(partial)  # later blocks: summed in fp32

    def result(self, h, weight, bias):
        grad_b = self.grad_b.to(bias.dtype) if bias is not None else None
        return self.grad_h.to(h.dtype), self.grad_w.to(weight.dtype), grad_b


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    chunk: int | None = None,
):
    """Mean cross-entropy and accuracy of `F.linear(h, weight, bias)` against `target` (N,).

    Rows whose target is -100 are left out, as in `F.cross_entropy(ignore_index=-100)`; with
    none left both are 0. `chunk`: rows per chunk (default: `chunk_rows` for the device).
    """
    if target.numel() == 0:
        zero = (h.sum() + weight.sum()) * 0.0  # keeps the graph connected
        return zero, zero.detach()
    chunk = chunk or chunk_rows(target.numel(), weight.shape[0], h.device.type)
    return _LinearCrossEntropy.apply(h, weight, bias, target, chunk)
