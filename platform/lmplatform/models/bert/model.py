"""BERT: a bidirectional Transformer encoder pretrained with masked LM and next-sentence prediction.

This module holds the family's config and presets; it imports no Ray, DeepSpeed or
torch.distributed, so the same code runs in a notebook, a test and a Ray Train worker.
"""

from __future__ import annotations

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
    SelfAttention,
    init_weights,
    linear_cross_entropy,
    padding_mask,
)

PRESETS: dict[str, dict] = {
    "debug": dict(
        hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_seq_len=128
    ),
    "mini": dict(
        hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_seq_len=512
    ),
    "small": dict(
        hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048, max_seq_len=512
    ),
    # BERT-base (Devlin et al. 2019): 110M parameters with the 30,522-token vocabulary.
    "base": dict(
        hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_seq_len=512
    ),
}


class BertConfig(StrictModel):
    family: Literal["bert"] = "bert"
    """Model family (selects this config)."""
    size: Literal["debug", "mini", "small", "base"] = "mini"
    """Preset that fills every field not set explicitly."""
    vocab_size: int = Field(30522, ge=8, le=1_000_000)
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
    """Learned position embeddings (longest input)."""
    type_vocab_size: int = Field(2, ge=1, le=16)
    """Segment (token type) embeddings: 2 for sentence pairs."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on embeddings, residual branches and the classifier."""
    attention_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout on attention probabilities."""
    layer_norm_eps: float = Field(1e-12, gt=0.0, le=1e-2)
    """LayerNorm epsilon (BERT's value, kept for Hugging Face parity)."""
    initializer_range: float = Field(0.02, gt=0.0, le=1.0)
    """Std of the normal initialiser."""

    _presets = model_validator(mode="before")(lambda data: fill_from_preset(data, PRESETS))

    @model_validator(mode="after")
    def _heads_divide(self) -> BertConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        return self


# --------------------------------------------------------------------------- model


class BertLayer(nn.Module):
    """Post-LayerNorm Transformer block, as in BERT (and Hugging Face's BertLayer)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)
        self.attn_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.ffn_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_ln(x + self.drop(self.attn(x, mask)))  # (B, T, C)
        return self.ffn_ln(x + self.drop(self.ffn_out(F.gelu(self.ffn_in(x)))))  # (B, T, C)


class BertEncoder(LayerStack, nn.Module):
    """Embeddings + encoder layers + pooler: Hugging Face's BertModel."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.hidden_size)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.apply(lambda m: init_weights(m, cfg.initializer_range))

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    def embed(self, input_ids, token_type_ids=None) -> torch.Tensor:
        """Token + position + segment embeddings, normalised and dropped out: (B, T, C)."""
        T = input_ids.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        pos = torch.arange(T, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos)
        if token_type_ids is not None:
            x = x + self.type_emb(token_type_ids)
        else:
            x = x + self.type_emb.weight[0]
        return self.drop(self.emb_ln(x))

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, all_layers: bool = False
    ):
        x = self.embed(input_ids, token_type_ids)
        mask = padding_mask(attention_mask)
        outs = [x]
        for layer in self.layers:
            x = self.run_layer(layer, x, mask)
            if all_layers:
                outs.append(x)
        return outs if all_layers else x

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler(h[:, 0]))  # [CLS] -> (B, C)

    def layer_depth(self, name: str) -> int:
        """Depth of parameter `name` for layer-wise LR decay: 0 embeddings, 1..L layers, L the
        pooler (it sits on the top layer)."""
        parts = name.split(".")
        if parts[0] == "layers":
            return int(parts[1]) + 1
        return (
            0 if parts[0] in ("tok_emb", "pos_emb", "type_emb", "emb_ln") else self.cfg.num_layers
        )

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> Encoded:
        h = self.forward(input_ids, attention_mask, token_type_ids)
        return Encoded(layers=[h], pooled=self.pool(h))

    def flops_per_token(self, seq_len: int) -> float:
        """Forward+backward FLOPs per token of the encoder (6N + attention, Kaplan / PaLM)."""
        c = self.cfg
        per_layer = 4 * c.hidden_size**2 + 2 * c.hidden_size * c.intermediate_size
        return 6 * c.num_layers * per_layer + 12 * c.num_layers * c.hidden_size * seq_len


class BertForPretraining(nn.Module):
    """Masked LM (decoder tied to the embeddings) + next-sentence prediction."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertEncoder(cfg)
        self.mlm_dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.mlm_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.nsp = nn.Linear(cfg.hidden_size, 2)
        for m in (self.mlm_dense, self.mlm_ln, self.nsp):
            init_weights(m, cfg.initializer_range)

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.mlm_ln(F.gelu(self.mlm_dense(h)))
        return F.linear(h, self.bert.tok_emb.weight, self.mlm_bias)  # (..., V)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        next_sentence_label=None,
        mlm_positions=None,
        mlm_labels=None,
        **_,
    ):
        """Losses and metrics as device tensors. `mlm_positions` / `mlm_labels` (from the
        collator, `models/bert/pretraining.mlm_targets`) pick the predicted tokens without waiting for
        the device; without them they are taken from `labels`."""
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        out: dict[str, torch.Tensor] = {}
        loss = h.new_zeros(())
        if mlm_positions is None and labels is not None:
            sel = (labels != -100).flatten()
            mlm_positions, mlm_labels = sel.nonzero().flatten(), labels.flatten()[sel]
        if mlm_positions is not None:
            # vocabulary logits only where a token is predicted (~15 %): the V-wide projection
            # is the most expensive matmul of a small BERT, so this is most of the speed-up
            picked = h.flatten(0, 1).index_select(0, mlm_positions)  # (M, C)
            t = self.mlm_ln(F.gelu(self.mlm_dense(picked)))
            # fused, chunked vocabulary projection + cross-entropy: no (M, V) logits tensor;
            # padded positions (label -100) weigh nothing
            mlm_loss, mlm_acc = linear_cross_entropy(
                t, self.bert.tok_emb.weight, self.mlm_bias, mlm_labels
            )
            loss = loss + mlm_loss
            out["mlm_loss"] = mlm_loss.detach()
            out["mlm_acc"] = mlm_acc
            out["predicted_tokens"] = (mlm_labels != -100).sum().detach()
        if next_sentence_label is not None:
            loss = loss + self._nsp(h, next_sentence_label, out)
        out["loss"] = loss
        return out

    def _nsp(self, h: torch.Tensor, label: torch.Tensor, out: dict) -> torch.Tensor:
        """Next-sentence loss over the pairs that have a label (-100: none), 0 where none has:
        weighted, not tested with `.any()`, which would wait for the device."""
        logits = self.nsp(self.bert.pool(h)).float()  # (B, 2)
        has = label >= 0
        per_pair = F.cross_entropy(logits, label.long().clamp(min=0), reduction="none")
        n = has.sum().clamp(min=1)
        out["nsp_loss"] = ((per_pair * has).sum() / n).detach()
        out["nsp_acc"] = (((logits.argmax(-1) == label) & has).sum() / n).detach()
        return (per_pair * has).sum() / n

    def flops_per_token(self, seq_len: int, mlm_fraction: float = 0.15) -> float:
        c = self.cfg
        head = 6 * mlm_fraction * (c.hidden_size**2 + c.hidden_size * c.vocab_size)
        return self.bert.flops_per_token(seq_len) + head
