"""ELMo-style language model: forward and backward recurrent LMs over subword embeddings.

This module holds the family's config and presets; it imports no Ray, DeepSpeed or
torch.distributed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from lmplatform.config import StrictModel
from lmplatform.models._preset import fill_from_preset
from lmplatform.models.layers import Dropout, Encoded, LayerStack

PRESETS: dict[str, dict] = {
    "debug": dict(embedding_size=64, hidden_size=64, num_layers=1, max_seq_len=128),
    "mini": dict(embedding_size=256, hidden_size=256, num_layers=2, max_seq_len=256),
    "small": dict(embedding_size=512, hidden_size=1024, num_layers=2, max_seq_len=256),
    # ELMo "original" (Peters et al. 2018) uses 4096-cell LSTMs projected to 512.
    "base": dict(embedding_size=512, hidden_size=2048, num_layers=2, max_seq_len=256),
}


class LSTMConfig(StrictModel):
    family: Literal["lstm"] = "lstm"
    """Model family (selects this config)."""
    size: Literal["debug", "mini", "small", "base"] = "mini"
    """Preset that fills every field not set explicitly."""
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    """Recurrent cell: a plain tanh RNN, an LSTM (ELMo's) or a GRU."""
    vocab_size: int = Field(8000, ge=8, le=1_000_000)
    """Embedding rows; set from the tokenizer when one is trained."""
    embedding_size: int = Field(256, ge=8, le=16384)
    """Subword embedding width (and the width of each layer's output projection)."""
    hidden_size: int = Field(256, ge=8, le=16384)
    """Recurrent state width per direction."""
    num_layers: int = Field(2, ge=1, le=8)
    """Stacked recurrent layers per direction."""
    max_seq_len: int = Field(256, ge=8, le=65536)
    """Longest training sequence (blocks are cut to this length)."""
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    """Dropout between layers."""
    tie_embeddings: bool = True
    """Share input embeddings with the softmax weights of both directions."""

    _presets = model_validator(mode="before")(lambda data: fill_from_preset(data, PRESETS))


# --------------------------------------------------------------------------- model


def reverse_padded(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row's real tokens in place, leaving right padding where it is."""
    if attention_mask is None:
        return x.flip(1)
    B, T = attention_mask.shape
    lengths = attention_mask.long().sum(dim=1, keepdim=True)  # (B, 1)
    t = torch.arange(T, device=x.device).expand(B, T)
    idx = torch.where(t < lengths, lengths - 1 - t, t)  # (B, T)
    if x.dim() == 3:
        idx = idx.unsqueeze(-1).expand_as(x)
    return torch.gather(x, 1, idx)


class _Direction(LayerStack, nn.Module):
    """A stack of single-layer RNNs, each projected back to the embedding width, with residuals."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.cell]
        self.rnns = nn.ModuleList(
            rnn(cfg.embedding_size, cfg.hidden_size, batch_first=True)
            for _ in range(cfg.num_layers)
        )
        self.projs = nn.ModuleList(
            nn.Linear(cfg.hidden_size, cfg.embedding_size) for _ in range(cfg.num_layers)
        )
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for rnn, proj in zip(self.rnns, self.projs):
            h, _ = self.run_layer(rnn, x)  # (B, T, H)
            x = x + self.drop(proj(h))  # (B, T, E), residual as in ELMo
            outs.append(x)
        return outs


class BiLM(nn.Module):
    """ELMo-style bidirectional LM: forward and backward LMs sharing embeddings and softmax."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.drop = Dropout(cfg.dropout)
        self.fwd = _Direction(cfg)
        self.bwd = _Direction(cfg)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        if not cfg.tie_embeddings:
            self.out_emb = nn.Parameter(torch.randn(cfg.vocab_size, cfg.embedding_size) * 0.02)

    @property
    def hidden_size(self) -> int:
        return 2 * self.cfg.embedding_size

    def _softmax_weight(self) -> torch.Tensor:
        return self.tok_emb.weight if self.cfg.tie_embeddings else self.out_emb

    def directions(self, input_ids, attention_mask=None):
        x = self.drop(self.tok_emb(input_ids))  # (B, T, E)
        f = self.fwd(x)
        b = [reverse_padded(h, attention_mask) for h in self.bwd(reverse_padded(x, attention_mask))]
        return x, f, b

    def forward(self, input_ids, attention_mask=None, **_):
        """Mean of the forward (predict t+1) and backward (predict t-1) LM losses."""
        _, f, b = self.directions(input_ids, attention_mask)
        w = self._softmax_weight()
        targets_f, targets_b = input_ids[:, 1:], input_ids[:, :-1]
        if attention_mask is not None:
            targets_f = targets_f.masked_fill(attention_mask[:, 1:] == 0, -100)
            targets_b = targets_b.masked_fill(attention_mask[:, 1:] == 0, -100)
        lf = F.linear(f[-1][:, :-1], w, self.out_bias).float()  # (B, T-1, V)
        lb = F.linear(b[-1][:, 1:], w, self.out_bias).float()
        loss_f = F.cross_entropy(lf.flatten(0, 1), targets_f.flatten(), ignore_index=-100)
        loss_b = F.cross_entropy(lb.flatten(0, 1), targets_b.flatten(), ignore_index=-100)
        loss = (loss_f + loss_b) / 2
        return {
            "loss": loss,
            "ppl": torch.exp(loss.detach().clamp(max=20)),
            "fwd_loss": loss_f.detach(),
            "bwd_loss": loss_b.detach(),
        }

    def layer_depth(self, name: str) -> int:
        """Depth of parameter `name` for layer-wise LR decay: 0 embeddings, 1..L recurrent
        levels (both directions), L the output bias."""
        parts = name.split(".")
        if parts[0] in ("fwd", "bwd"):
            return int(parts[2]) + 1
        return 0 if parts[0] == "tok_emb" else self.cfg.num_layers

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> Encoded:
        """Layer 0 is the token embedding (seen from both sides), then one layer per RNN level."""
        x, f, b = self.directions(input_ids, attention_mask)
        layers = [torch.cat([x, x], dim=-1)] + [torch.cat([hf, hb], dim=-1) for hf, hb in zip(f, b)]
        return Encoded(layers=layers, pooled=None)

    def flops_per_token(self, seq_len: int) -> float:
        c = self.cfg
        gates = {"rnn": 1, "lstm": 4, "gru": 3}[c.cell]
        rnn = (
            gates * (c.embedding_size + c.hidden_size) * c.hidden_size
            + c.hidden_size * c.embedding_size
        )
        return 6 * (2 * c.num_layers * rnn + 2 * c.embedding_size * c.vocab_size)
