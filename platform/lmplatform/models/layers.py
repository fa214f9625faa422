"""Layers shared by the families: attention through SDPA, the scalar mix, task heads.

Nothing here imports Ray, DeepSpeed or torch.distributed.
"""

from __future__ import annotations

import math
import sys
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
    """Dropout; on CPU with 16-bit random draws, 3 per 64-bit word.

    CPU `bernoulli_` / `rand` produce ~250M numbers/s, which made dropout ~15 % of a BERT-mini
    training step here. One int64 draw holds 63 random bits: its three low 16-bit halves are
    three uniform draws (the top half is skipped: its sign bit is always 0), so the same mask
    costs a third of the generator calls. Keep probability is exact to 1/65536. GPUs use
    PyTorch's own (Philox) dropout.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or sys.byteorder != "little":
        return F.dropout(x, p, True)
    n = x.numel()
    words = torch.empty((n + 2) // 3, dtype=torch.int64).random_()
    draws = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:n].view(x.shape)
    keep = draws >= (-32768 + round(p * 65536))
    return x * keep * (1.0 / (1.0 - p))


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
"""Logits the fused cross-entropy holds at once on an accelerator, in elements: 512 MiB in fp32,
plus their 16-bit copy for the gradient matmuls under autocast. Whole, GPT-base's logits for a
batch of 32 x 1023 tokens would be 6.6 GB (and as much again for their gradient)."""

CPU_CHUNK_ROWS = 256
"""Rows per chunk on CPU, where a chunk's logits should stay in cache across its passes."""


def chunk_rows(rows: int, vocab: int, device_type: str, budget: int = CHUNK_LOGITS) -> int:
    """Rows per chunk of the fused cross-entropy.

    On an accelerator, the fewest chunks whose logits fit `budget`, all of one size (no small
    tail): every chunk re-reads the whole (V, C) weight three times, adds a (V, C) partial into
    the weight's gradient and launches its own kernels, a cost that grows with the number of
    chunks, not the rows (fixed 256-row chunks made 128 of them per GPT-base micro-batch).
    On CPU, `CPU_CHUNK_ROWS`: measured on 2 cores with BERT-mini shapes in bf16, 256-row chunks
    ran the loss and its gradients 1.3-1.5x faster than one chunk of 614 or 4,096 rows."""
    if device_type == "cpu":
        return CPU_CHUNK_ROWS
    chunks = max(1, -(-rows * vocab // budget))
    return -(-rows // chunks)


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `h @ W.T + b`, computed chunk by chunk with its gradients in one pass.

    The (N, V) logits are made a chunk of rows at a time (`chunk_rows` sizes it), turned into
    per-row loss and accuracy and into gradients, and dropped; the means are taken once at the
    end. Rows whose target is -100 are weighed 0 rather
    than removed, so no step reads a count back from the device. For BERT-mini the logits are
    the step's largest tensor and their bf16->fp32 copy, log-softmax and backward were ~15 % of
    a CPU step.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, target, chunk: int):
        dev = h.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        with torch.autocast(dev, enabled=False):
            w, hh = weight.to(dtype), h.to(dtype)
            b = bias.float() if bias is not None else None
            keep = target != -100  # (N,)
            share = keep.float() / keep.sum().clamp(min=1)  # (N,) each row's part of the mean
            tgt = torch.where(keep, target, 0)  # (N,) an ignored row reads column 0, weighed 0
            N = h.shape[0]
            row_loss = torch.empty(N, dtype=torch.float32, device=h.device)
            row_hit = torch.empty(N, dtype=torch.bool, device=h.device)
            grads = _CEGrads(h, weight, bias, dtype) if any(ctx.needs_input_grad[:3]) else None
            for s in range(0, N, chunk):
                hc, tc = hh[s : s + chunk], tgt[s : s + chunk]
                logits = (hc @ w.t()).float()  # (n, V)
                if b is not None:
                    logits += b
                lse = torch.logsumexp(logits, dim=-1)  # (n,)
                row_loss[s : s + chunk] = lse - logits.gather(1, tc[:, None])[:, 0]
                row_hit[s : s + chunk] = logits.argmax(-1) == tc
                if grads is not None:
                    grads.add(s, hc, w, logits, lse, tc, share[s : s + chunk])
            loss = torch.where(keep, row_loss, 0.0).sum() / keep.sum().clamp(min=1)
            acc = (row_hit & keep).sum() / keep.sum().clamp(min=1)
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


class _CEGrads:
    """The fused cross-entropy's gradients, filled chunk by chunk; weight and bias gradients
    are summed in fp32 whatever the matmul dtype."""

    def __init__(self, h, weight, bias, dtype):
        self.grad_h = torch.empty(h.shape, dtype=dtype, device=h.device)
        self.grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
        self.grad_b = None
        if bias is not None:
            self.grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=h.device)

    def add(self, s, hc, w, logits, lse, tc, share) -> None:
        """One chunk: d(mean loss)/d(logits) = (softmax - onehot) * share, made in place of
        the logits, then through the projection."""
        p = logits.sub_(lse[:, None]).exp_()  # softmax, in place
        p[torch.arange(len(tc), device=p.device), tc] -= 1.0
        p.mul_(share[:, None])
        g = p.to(hc.dtype)
        self.grad_h[s : s + len(tc)] = g @ w
        if g.dtype == torch.float32:
            self.grad_w.addmm_(g.t(), hc)  # straight into the sum: no (V, C) partial
        else:
            self.grad_w += (g.t() @ hc).float()
        if self.grad_b is not None:
            self.grad_b += p.sum(0)

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
