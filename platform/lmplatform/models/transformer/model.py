"""The Transformer encoder-decoder for translation (Vaswani et al. 2017, "Attention Is All You Need").

As in the paper: sinusoidal positions, embeddings scaled by sqrt(d_model), post-LayerNorm blocks
(pre-LayerNorm with `pre_ln`), ReLU feed-forward, one embedding matrix shared by the source, the
target and the output layer (a joint vocabulary), label-smoothed cross-entropy. The layer
layout and parameter names follow Hugging Face's Marian model, so a post-LN model exports to
`MarianMTModel` weight for weight (lmplatform.models.hf).

Decoding (greedy and batched beam search) runs incrementally: the encoder output is computed
once and each decoder layer keeps a key/value cache (`DecoderCache`); see
lmplatform.models.generation. This module imports no Ray, DeepSpeed or torch.distributed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    LayerStack,
    dropout,
    init_weights,
    padding_mask,
)

PRESETS: dict[str, dict] = {
    "debug": dict(
        hidden_size=64,
        num_encoder_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        intermediate_size=128,
        max_seq_len=128,
    ),
    "mini": dict(
        hidden_size=256,
        num_encoder_layers=3,
        num_decoder_layers=3,
        num_heads=4,
        intermediate_size=1024,
        max_seq_len=256,
    ),
    "small": dict(
        hidden_size=384,
        num_encoder_layers=4,
        num_decoder_layers=4,
        num_heads=6,
        intermediate_size=1536,
        max_seq_len=512,
    ),
    # the paper's "base" model (Vaswani et al. 2017, table 3): 65M parameters with 37k tokens
    "base": dict(
        hidden_size=512,
        num_encoder_layers=6,
        num_decoder_layers=6,
        num_heads=8,
        intermediate_size=2048,
        max_seq_len=512,
    ),
}


class TransformerConfig(StrictModel):
    family: Literal["transformer"] = "transformer"
    """Model family (selects this config)."""
    size: Literal["debug", "mini", "small", "base"] = "mini"
    """Preset that fills every field not set explicitly."""
    vocab_size: int = Field(8000, ge=8, le=1_000_000)
    """Rows of the joint source/target embedding; set from the tokenizer when one is trained."""
    hidden_size: int = Field(256, ge=8, le=16384)
    """d_model: width of the residual stream."""
    num_encoder_layers: int = Field(3, ge=1, le=128)
    num_decoder_layers: int = Field(3, ge=1, le=128)
    num_heads: int = Field(4, ge=1, le=256)
    """Attention heads; must divide hidden_size."""
    intermediate_size: int = Field(1024, ge=8, le=65536)
    """Width of the feed-forward layer (d_ff)."""
    max_seq_len: int = Field(256, ge=8, le=65536)
    """Longest source or target, in tokens."""
    activation: Literal["relu", "gelu", "gelu_tanh"] = "relu"
    """Feed-forward activation (the paper's ReLU; GELU as in BERT; GPT-2's tanh GELU)."""
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    """The paper's fixed sinusoids (one table for both sides), or a learned table per side
    (BERT's and GPT's: what a warm start from them takes)."""
    embedding_layer_norm: bool = False
    """A LayerNorm on each side's embeddings (BERT's; BART's `layernorm_embedding`)."""
    scale_embedding: bool = True
    """Token embeddings times sqrt(d_model), as in the paper (BERT and GPT do not scale)."""
    pre_ln: bool = False
    """LayerNorm before each sublayer (plus a final one) instead of after it. Post-LN is the
    paper's and Marian's layout (exports to Hugging Face); pre-LN tolerates higher learning
    rates and deeper stacks."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on embeddings, residual branches and attention weights (the paper's 0.1)."""
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    """Label smoothing of the training loss (the paper's 0.1)."""
    layer_norm_eps: float = Field(1e-5, gt=0.0, le=1e-2)
    initializer_range: float = Field(0.02, gt=0.0, le=1.0)
    """Std of the normal initialiser (embeddings start at 1/sqrt(d_model): see `_init`)."""
    pad_token_id: int = Field(0, ge=0)
    bos_token_id: int = Field(1, ge=0)
    """The decoder's start token."""
    eos_token_id: int = Field(2, ge=0)

    _presets = model_validator(mode="before")(lambda data: fill_from_preset(data, PRESETS))

    @model_validator(mode="after")
    def _check(self) -> TransformerConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.positions == "sinusoidal" and self.hidden_size % 2:
            raise ValueError(f"hidden_size={self.hidden_size} must be even (sinusoidal positions)")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(self, name) >= self.vocab_size:
                raise ValueError(f"{name}={getattr(self, name)} >= vocab_size={self.vocab_size}")
        return self


def sinusoidal_positions(n: int, dim: int) -> torch.Tensor:
    """(n, dim) table: sines in the first half of the channels, cosines of the same frequencies
    in the second (Marian's layout of the paper's encoding)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angle = pos * freq
    return torch.cat([angle.sin(), angle.cos()], dim=1).float()


# --------------------------------------------------------------------------- layers


@dataclass
class LayerCache:
    """One decoder layer's keys and values: self-attention grows a step at a time, cross-attention
    is computed from the encoder output once."""

    self_k: torch.Tensor | None = None  # (B, nh, t, hs)
    self_v: torch.Tensor | None = None
    cross_k: torch.Tensor | None = None  # (B, nh, S, hs)
    cross_v: torch.Tensor | None = None


@dataclass
class DecoderCache:
    """Incremental-decoding state: the layers' caches and how many target positions they hold."""

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search: the beams that survive a step, in their new order)."""
        for c in self.layers:
            for name in ("self_k", "self_v", "cross_k", "cross_v"):
                t = getattr(c, name)
                if t is not None:
                    setattr(c, name, t.index_select(0, index))


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (self- or cross-attention)."""

    def __init__(self, hidden: int, heads: int, p: float):
        super().__init__()
        self.heads, self.p = heads, p
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: torch.Tensor,
        kv: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: LayerCache | None = None,
        cross: bool = False,
    ) -> torch.Tensor:
        """`kv`: the encoder output for cross-attention (None: self-attention). `mask`: (B, 1, 1,
        S) bool, True = attend. With `cache`, x holds only the new target positions."""
        B, T, C = x.shape
        q = self._split(self.q_proj(x))
        if cross and cache is not None and cache.cross_k is not None:
            k, v = cache.cross_k, cache.cross_v
        else:
            src = x if kv is None else kv
            k, v = self._split(self.k_proj(src)), self._split(self.v_proj(src))
            if cache is not None and cross:
                cache.cross_k, cache.cross_v = k, v
            elif cache is not None:
                if cache.self_k is not None:
                    k = torch.cat([cache.self_k, k], dim=2)
                    v = torch.cat([cache.self_v, v], dim=2)
                cache.self_k, cache.self_v = k, v
        if causal and T > 1:
            # new positions see every cached one and the new ones up to themselves
            past = k.shape[2] - T
            allowed = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
            mask = allowed[None, None] if mask is None else (mask & allowed)
        drop = self.p if self.training else 0.0
        if drop > 0 and x.device.type == "cpu":
            # no fused CPU kernel with dropout: the same math with the fast CPU dropout
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // self.heads))
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            y = dropout(torch.softmax(att, dim=-1), drop, True).to(v.dtype) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


_ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class FeedForward(nn.Module):
    """fc2(dropout(act(fc1(x)))); mixed into the layers so parameter names match Marian's."""

    def _init_ffn(self, cfg: TransformerConfig) -> None:
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = _ACTIVATIONS[cfg.activation]
        self.drop = Dropout(cfg.dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class EncoderLayer(FeedForward, nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self._init_ffn(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.drop(self.self_attn(self.self_attn_layer_norm(x), mask=mask))
            return x + self.drop(self.ffn(self.final_layer_norm(x)))
        x = self.self_attn_layer_norm(x + self.drop(self.self_attn(x, mask=mask)))
        return self.final_layer_norm(x + self.drop(self.ffn(x)))


class DecoderLayer(FeedForward, nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre_ln = cfg.pre_ln
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.self_attn = Attention(h, cfg.num_heads, cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(h, eps=eps)
        self.encoder_attn = Attention(h, cfg.num_heads, cfg.dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(h, eps=eps)
        self._init_ffn(cfg)
        self.final_layer_norm = nn.LayerNorm(h, eps=eps)

    def forward(self, x, memory, memory_mask, cache: LayerCache | None = None) -> torch.Tensor:
        def self_attn(h):
            return self.self_attn(h, causal=True, cache=cache)

        def cross_attn(h):
            return self.encoder_attn(h, kv=memory, mask=memory_mask, cache=cache, cross=True)

        if self.pre_ln:
            x = x + self.drop(self_attn(self.self_attn_layer_norm(x)))
            x = x + self.drop(cross_attn(self.encoder_attn_layer_norm(x)))
            return x + self.drop(self.ffn(self.final_layer_norm(x)))
        x = self.self_attn_layer_norm(x + self.drop(self_attn(x)))
        x = self.encoder_attn_layer_norm(x + self.drop(cross_attn(x)))
        return self.final_layer_norm(x + self.drop(self.ffn(x)))


# --------------------------------------------------------------------------- model


class Stack(nn.Module):
    """The encoder's or decoder's layers; pre-LN stacks end in a LayerNorm (their residual
    stream is otherwise unnormalised). With learned positions each side has its own table and,
    optionally, a LayerNorm on its embeddings (BART's names)."""

    def __init__(self, cfg: TransformerConfig, layer: type[nn.Module], n: int):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.embed_positions = (
            nn.Embedding(cfg.max_seq_len, h) if cfg.positions == "learned" else None
        )
        self.layernorm_embedding = nn.LayerNorm(h, eps=eps) if cfg.embedding_layer_norm else None
        self.layers = nn.ModuleList(layer(cfg) for _ in range(n))
        self.layer_norm = (
            nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.pre_ln else None
        )


class Transformer(LayerStack, nn.Module):
    """Encoder-decoder with one shared embedding matrix (source, target, output layer)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.shared = nn.Embedding(cfg.vocab_size, h)
        if cfg.positions == "sinusoidal":
            self.register_buffer(
                "positions", sinusoidal_positions(cfg.max_seq_len, h), persistent=False
            )
        self.embed_scale = math.sqrt(h) if cfg.scale_embedding else 1.0
        self.drop = Dropout(cfg.dropout)
        self.encoder = Stack(cfg, EncoderLayer, cfg.num_encoder_layers)
        self.decoder = Stack(cfg, DecoderLayer, cfg.num_decoder_layers)
        self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
        self._init()

    def _init(self) -> None:
        self.apply(lambda m: init_weights(m, self.cfg.initializer_range))
        if self.cfg.scale_embedding:
            # scaled by sqrt(d) on the way in, tied to the output layer on the way out: N(0,
            # d^-1/2) gives unit-variance inputs and logits of order one (the paper's / fairseq's)
            nn.init.normal_(self.shared.weight, mean=0.0, std=self.cfg.hidden_size**-0.5)
        with torch.no_grad():
            self.shared.weight[self.cfg.pad_token_id].zero_()

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    def _embed(self, ids: torch.Tensor, side: Stack, start: int = 0) -> torch.Tensor:
        T = ids.shape[1]
        if start + T > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds max_seq_len={self.cfg.max_seq_len}"
            )
        if side.embed_positions is not None:
            pos = side.embed_positions.weight[start : start + T]
        else:
            pos = self.positions[start : start + T]
        x = self.shared(ids) * self.embed_scale + pos
        if side.layernorm_embedding is not None:
            x = side.layernorm_embedding(x)
        return self.drop(x)

    # ------------------------------------------------------------------ encoder / decoder

    def encode_source(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(memory (B, S, H), memory mask (B, 1, 1, S) bool or None when nothing is padded)."""
        mask = padding_mask(attention_mask)
        x = self._embed(input_ids, self.encoder)
        for layer in self.encoder.layers:
            x = self.run_layer(layer, x, mask)
        if self.encoder.layer_norm is not None:
            x = self.encoder.layer_norm(x)
        return x, mask

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """Decoder hidden states (B, T, H) for the given target prefix. With `cache`,
        `decoder_input_ids` are only the new positions (usually one) and the cache grows."""
        start = cache.length if cache is not None else 0
        if cache is not None and not cache.layers:
            cache.layers = [LayerCache() for _ in self.decoder.layers]
        x = self._embed(decoder_input_ids, self.decoder, start)
        for i, layer in enumerate(self.decoder.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x = self.run_layer(layer, x, memory, memory_mask, layer_cache)
        if self.decoder.layer_norm is not None:
            x = self.decoder.layer_norm(x)
        if cache is not None:
            cache.length += decoder_input_ids.shape[1]
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.shared.weight) + self.final_logits_bias

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for teacher forcing: BOS, then the labels but the last (-100 -> pad)."""
        start = torch.full_like(labels[:, :1], self.cfg.bos_token_id)
        prev = labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.cfg.pad_token_id)
        return torch.cat([start, prev], dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        **_,
    ) -> dict:
        """Teacher-forced training: `labels` (B, T) are the target ids ending in EOS, -100 at
        padding. Returns the label-smoothed loss (the objective), plain cross-entropy `nll`
        (comparable across smoothing values), token accuracy, and the logits."""
        memory, mask = self.encode_source(input_ids, attention_mask)
        if decoder_input_ids is None:
            decoder_input_ids = self.shift_right(labels)
        logits = self.logits(self.decode(decoder_input_ids, memory, mask))  # (B, T, V)
        out = {"logits": logits}
        if labels is not None:
            flat, target = logits.flatten(0, 1).float(), labels.flatten()
            out["loss"] = F.cross_entropy(
                flat, target, ignore_index=-100, label_smoothing=self.cfg.label_smoothing
            )
            with torch.no_grad():
                keep = target != -100
                nll = (
                    F.cross_entropy(flat[keep], target[keep])
                    if bool(keep.any())
                    else flat.sum() * 0
                )
                out["nll"] = nll
                out["ppl"] = torch.exp(nll.clamp(max=20))
                out["acc"] = (flat[keep].argmax(-1) == target[keep]).float().mean()
        return out

    # ------------------------------------------------------------------ platform hooks

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> Encoded:
        """The encoder's output, as the encoder families give it (frozen-feature use)."""
        h, _ = self.encode_source(input_ids, attention_mask)
        return Encoded(layers=[h], pooled=None)

    def layer_depth(self, name: str) -> int:
        """Depth for layer-wise LR decay: 0 embeddings, encoder then decoder layers above."""
        parts = name.split(".")
        n_enc = self.cfg.num_encoder_layers
        if parts[0] == "shared" or parts[1] in ("embed_positions", "layernorm_embedding"):
            return 0
        if parts[:2] == ["encoder", "layers"]:
            return int(parts[2]) + 1
        if parts[:2] == ["decoder", "layers"]:
            return n_enc + int(parts[2]) + 1
        if parts[0] == "encoder":  # its final LayerNorm
            return n_enc
        return n_enc + self.cfg.num_decoder_layers

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per target token (source and target of similar length)."""
        c = self.cfg
        h, f = c.hidden_size, c.intermediate_size
        enc = c.num_encoder_layers * (4 * h * h + 2 * h * f)
        dec = c.num_decoder_layers * (8 * h * h + 2 * h * f)
        attn = 12 * (c.num_encoder_layers + 2 * c.num_decoder_layers) * h * seq_len
        return 6 * (enc + dec + h * c.vocab_size) + attn
