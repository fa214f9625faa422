"""GPT: a decoder-only causal Transformer language model.

This module holds the family's config and presets; it imports no Ray, DeepSpeed or
torch.distributed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from lmplatform.config import StrictModel
from lmplatform.models._preset import fill_from_preset
from lmplatform.models.layers import (
    Dropout,
    Encoded,
    KVCache,
    LayerStack,
    SelfAttention,
    init_weights,
    last_token,
    linear_cross_entropy,
)

PRESETS: dict[str, dict] = {
    "debug": dict(
        hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256, max_seq_len=128
    ),
    "mini": dict(
        hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_seq_len=512
    ),
    "small": dict(
        hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048, max_seq_len=1024
    ),
    # GPT-2 small (Radford et al. 2019): 124M parameters with the 50,257-token vocabulary.
    "base": dict(
        hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_seq_len=1024
    ),
}


class GPTConfig(StrictModel):
    family: Literal["gpt"] = "gpt"
    """Model family (selects this config)."""
    size: Literal["debug", "mini", "small", "base"] = "mini"
    """Preset that fills every field not set explicitly."""
    vocab_size: int = Field(50257, ge=8, le=1_000_000)
    """Embedding rows; set from the tokenizer when one is trained."""
    hidden_size: int = Field(256, ge=8, le=16384)
    """Width of the residual stream."""
    num_layers: int = Field(4, ge=1, le=128)
    """Transformer blocks."""
    num_heads: int = Field(4, ge=1, le=256)
    """Attention heads; must divide hidden_size."""
    intermediate_size: int = Field(1024, ge=8, le=65536)
    """Width of the feed-forward layer."""
    max_seq_len: int = Field(512, ge=8, le=65536)
    """Context length (learned position embeddings)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on embeddings, attention and residual branches (0 for pretraining)."""
    layer_norm_eps: float = Field(1e-5, gt=0.0, le=1e-2)
    """LayerNorm epsilon (GPT-2's value)."""
    initializer_range: float = Field(0.02, gt=0.0, le=1.0)
    """Std of the normal initialiser."""

    _presets = model_validator(mode="before")(lambda data: fill_from_preset(data, PRESETS))

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        return self


# --------------------------------------------------------------------------- model


class GPTBlock(nn.Module):
    """Pre-LayerNorm block, as in GPT-2."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.fc = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), causal=True, cache=cache))  # (B, T, C)
        return x + self.drop(self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh")))


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy (temperature 0), or drawn from the softmax at
    `temperature` over the `top_k` most likely tokens (None: all) and, of those, the smallest
    set holding `top_p` of the probability (nucleus sampling; 1: all)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or (self.top_k or 1) < 1:
            raise ValueError(f"invalid sampling {self}")

    def pick(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, V) logits -> (B, 1) token ids."""
        if self.temperature <= 0:
            return logits.argmax(-1, keepdim=True)
        logits = logits / self.temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1:
            ordered, order = logits.sort(-1, descending=True)
            probs = torch.softmax(ordered, -1)
            # a token goes once the more likely ones before it hold top_p (the first stays)
            drop = probs.cumsum(-1) - probs >= self.top_p
            logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)


class GPT(LayerStack, nn.Module):
    """Decoder-only causal LM with the output layer tied to the token embeddings."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.hidden_size)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.apply(lambda m: init_weights(m, cfg.initializer_range))
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers) so the stream's variance holds
        for b in self.blocks:
            for proj in (b.attn.out, b.proj):
                nn.init.normal_(
                    proj.weight, mean=0.0, std=cfg.initializer_range / math.sqrt(2 * cfg.num_layers)
                )

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    def hidden(
        self,
        input_ids: torch.Tensor,
        all_layers: bool = False,
        cache: list[KVCache] | None = None,
    ):
        """Final hidden states (B, T, C). With `cache` (one KVCache per block), input_ids are
        the positions after the cached ones and the caches grow."""
        B, T = input_ids.shape
        start = cache[0].length if cache else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}"
            )
        pos = torch.arange(start, start + T, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))  # (B, T, C)
        outs = [x]
        for i, block in enumerate(self.blocks):
            x = self.run_layer(block, x, cache[i] if cache else None)
            if all_layers:
                outs.append(x)
        x = self.ln_f(x)
        if all_layers:
            outs[-1] = x
            return outs
        return x

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.linear(self.hidden(input_ids), self.tok_emb.weight)  # (B, T, V)

    def forward(self, input_ids, labels=None, **_):
        """Causal LM loss: position t predicts token t+1 (`labels` defaults to the inputs)."""
        h = self.hidden(input_ids)[:, :-1]  # (B, T-1, C)
        target = (input_ids if labels is None else labels)[:, 1:]
        # fused, chunked output projection + cross-entropy: no (B, T, V) logits tensor
        loss, acc = linear_cross_entropy(
            h.flatten(0, 1), self.tok_emb.weight, None, target.flatten()
        )
        return {"loss": loss, "ppl": torch.exp(loss.detach().clamp(max=20)), "acc": acc}

    # right padding needs no mask here: under causal attention a real token never sees the pads
    # that follow it, so the task heads read the last real position.
    def layer_depth(self, name: str) -> int:
        """Depth of parameter `name` for layer-wise LR decay: 0 embeddings, 1..L blocks, L the
        final norm."""
        parts = name.split(".")
        if parts[0] == "blocks":
            return int(parts[1]) + 1
        return 0 if parts[0] in ("tok_emb", "pos_emb") else self.cfg.num_layers

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> Encoded:
        h = self.hidden(input_ids)
        return Encoded(layers=[h], pooled=last_token(h, attention_mask))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        top_p: float = 1.0,
    ) -> torch.Tensor:
        """Greedy (temperature 0), or sampling with temperature and optional top-k / top-p: the
        prompt and its continuation, (B, T + new). Rows that ended (eos_id) are filled with
        eos_id."""
        sampling = Sampling(temperature, top_k, top_p)
        steps = self.generate_steps(
            input_ids, max_new_tokens, sampling, eos_id, generator, use_cache
        )
        return torch.cat([input_ids, *steps], dim=1)

    def generate_steps(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """The next token of every row, (B, 1), one step at a time (streaming reads them as
        they come), picked as `sampling` says (None: greedy); stops when every row has produced
        eos_id or after max_new_tokens.

        Incremental: each block keeps the keys and values of the positions so far, so a step
        computes one position, not the whole prefix (`use_cache=False`: the full recompute,
        kept as the reference the tests compare with). Past `max_seq_len` the context slides as
        without a cache: the window of the newest max_seq_len tokens is recomputed each step."""
        sampling = sampling or Sampling()
        out = input_ids
        done = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
        cache: list[KVCache] | None = None
        for _ in range(max_new_tokens):
            if not use_cache:
                h = self.hidden(out[:, -self.cfg.max_seq_len :])
            elif cache is None or cache[0].length >= self.cfg.max_seq_len:
                cache = [KVCache() for _ in self.blocks]  # the prompt, or a slid window
                h = self.hidden(out[:, -self.cfg.max_seq_len :], cache=cache)
            else:
                h = self.hidden(out[:, -1:], cache=cache)
            logits = F.linear(h[:, -1], self.tok_emb.weight).float()  # (B, V)
            nxt = sampling.pick(logits, generator)
            if eos_id is not None:
                nxt = torch.where(done[:, None], torch.full_like(nxt, eos_id), nxt)
                done |= nxt[:, 0] == eos_id
            out = torch.cat([out, nxt], dim=1)
            yield nxt
            if eos_id is not None and bool(done.all()):
                return

    def flops_per_token(self, seq_len: int) -> float:
        c = self.cfg
        per_layer = 4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size
        return (
            6 * (c.num_layers * per_layer + c.hidden_size * c.vocab_size)
            + 12 * c.num_layers * c.hidden_size * seq_len
        )
