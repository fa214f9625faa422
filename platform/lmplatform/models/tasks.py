"""Task models: any family's encoder plus a new head, for full fine-tuning or frozen features.

- sequence / pair classification: a linear head on a pooled vector (BERT's pooler, GPT's last
  real token, the mean of the LSTM's mixed layers);
- token classification: a linear head on every position (labels sit on the first sub-token of
  each word; the collator marks the rest -100).

With `frozen=True` the encoder is a fixed feature extractor: it gets no gradients, stays in eval
mode (no dropout), and only the head — including ELMo's scalar mix — trains.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lmplatform.models.bert import BertConfig, BertEncoder, BertForPretraining
from lmplatform.models.gpt import GPT, GPTConfig
from lmplatform.models.layers import Dropout, Encoded, ScalarMix, masked_mean
from lmplatform.models.lstm import BiLM, LSTMConfig

TaskKind = Literal["classification", "pair_classification", "token_classification"]
ModelCfg = BertConfig | GPTConfig | LSTMConfig


def build_pretraining_model(cfg: ModelCfg) -> nn.Module:
    """The family's pretraining model: BERT MLM+NSP, GPT causal LM, or the ELMo-style biLM."""
    if cfg.family == "bert":
        return BertForPretraining(cfg)
    if cfg.family == "gpt":
        return GPT(cfg)
    return BiLM(cfg)


def encoder_of(model: nn.Module) -> nn.Module:
    """The part of a pretraining model that a task model keeps."""
    return model.bert if isinstance(model, BertForPretraining) else model


def build_encoder(cfg: ModelCfg) -> nn.Module:
    if cfg.family == "bert":
        return BertEncoder(cfg)
    return GPT(cfg) if cfg.family == "gpt" else BiLM(cfg)


class TaskModel(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        kind: TaskKind,
        num_labels: int,
        dropout: float = 0.1,
        frozen: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.kind = kind
        self.num_labels = num_labels
        self.frozen = frozen
        self.mix = ScalarMix(encoder.cfg.num_layers + 1) if isinstance(encoder, BiLM) else None
        self.drop = Dropout(dropout)
        # Hugging Face's GPT2ForSequenceClassification has a bias-free `score`: match it for export
        bias = not (isinstance(encoder, GPT) and kind != "token_classification")
        self.head = nn.Linear(encoder.hidden_size, num_labels, bias=bias)
        nn.init.normal_(self.head.weight, std=0.02)
        if bias:
            nn.init.zeros_(self.head.bias)
        if frozen:
            encoder.requires_grad_(False)
            encoder.eval()

    @property
    def cfg(self) -> ModelCfg:
        return self.encoder.cfg

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # features stay deterministic: no dropout inside the encoder
        return self

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **_):
        if self.frozen:
            with torch.no_grad():
                enc = self.encoder.encode(input_ids, attention_mask, token_type_ids)
        else:
            enc = self.encoder.encode(input_ids, attention_mask, token_type_ids)
        logits = self.head_logits(enc, attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(
                logits.float().flatten(0, -2), labels.flatten(), ignore_index=-100
            )
        return out

    def head_logits(self, enc: Encoded, attention_mask=None) -> torch.Tensor:
        """Logits from the encoder's output: the part a task keeps when tasks share a frozen
        encoder (serving runs the encoder once for several tasks' heads)."""
        h = self.mix(enc.layers) if self.mix is not None else enc.layers[-1]  # (B, T, H)
        if self.kind == "token_classification":
            return self.head(self.drop(h))  # (B, T, L)
        # frozen features: the mean over real tokens. A frozen BERT pooler is tuned to NSP
        # and nearly constant across sentences (measured: a head on it stays at chance)
        use_pooler = enc.pooled is not None and not self.frozen
        pooled = enc.pooled if use_pooler else masked_mean(h, attention_mask)
        return self.head(self.drop(pooled))  # (B, L)

    def flops_per_token(self, seq_len: int) -> float:
        f = (
            self.encoder.flops_per_token(seq_len)
            if hasattr(self.encoder, "flops_per_token")
            else 0.0
        )
        return f / 3 if self.frozen else f  # frozen: forward only
