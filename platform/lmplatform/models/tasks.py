"""Task models: any family's encoder plus a head of one layout (models/heads.py), for full
fine-tuning or frozen features.

With `frozen=True` the encoder is a fixed feature extractor: it gets no gradients, stays in eval
mode (no dropout), and only the head — including ELMo's scalar mix — trains. Which layout and
loss a task type uses is the task type's business (lmplatform.tasks); this module only builds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmplatform.models.families import family
from lmplatform.models.heads import HEADS
from lmplatform.models.layers import Dropout, Encoded, ScalarMix

# head layout of the task types that existed before layouts were stored with a model
LEGACY_LAYOUTS = {
    "classification": "pooled",
    "pair_classification": "pooled",
    "token_classification": "token",
}


def build_pretraining_model(cfg) -> nn.Module:
    """The family's pretraining model: BERT MLM+NSP, GPT causal LM, or the ELMo-style biLM."""
    return family(cfg).pretraining(cfg)


def encoder_of(model: nn.Module) -> nn.Module:
    """The part of a pretraining model that a task model keeps."""
    return family(model.cfg).encoder_of(model)


def build_encoder(cfg) -> nn.Module:
    return family(cfg).encoder(cfg)


class TaskModel(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        kind: str,
        num_labels: int,
        dropout: float = 0.1,
        frozen: bool = False,
        layout: str | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.kind = kind  # the task type's name (recorded with the model)
        self.layout = layout or LEGACY_LAYOUTS[kind]
        self.num_labels = num_labels
        self.frozen = frozen
        fam = family(encoder.cfg)
        self.mix = ScalarMix(encoder.cfg.num_layers + 1) if fam.layer_mix else None
        self.drop = Dropout(dropout)
        # a family's transformers class may have a bias-free sequence head: match it for export
        bias = fam.pooled_head_bias or self.layout != "pooled"
        self.head = HEADS[self.layout](encoder.hidden_size, num_labels, bias=bias)
        if frozen:
            encoder.requires_grad_(False)
            encoder.eval()

    @property
    def cfg(self):
        return self.encoder.cfg

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # features stay deterministic: no dropout inside the encoder
        return self

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, **inputs):
        if self.frozen:
            with torch.no_grad():
                enc = self.encoder.encode(input_ids, attention_mask, token_type_ids)
        else:
            enc = self.encoder.encode(input_ids, attention_mask, token_type_ids)
        logits = self.head_logits(enc, attention_mask, **inputs)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(
                logits.float().flatten(0, -2), labels.flatten(), ignore_index=-100
            )
        return out

    def head_logits(self, enc: Encoded, attention_mask=None, **inputs) -> torch.Tensor:
        """Logits from the encoder's output: the part a task keeps when tasks share a frozen
        encoder (serving runs the encoder once for several tasks' heads). `inputs`: what the
        head layout reads besides hidden states (`predicate_pos`)."""
        h = self.mix(enc.layers) if self.mix is not None else enc.layers[-1]  # (B, T, H)
        inputs.pop("truncated", None)
        return self.head.logits(h, enc, attention_mask, self.drop, self.frozen, **inputs)

    def layer_depth(self, name: str) -> int:
        """Depth of parameter `name` for layer-wise LR decay: the encoder's depths (0
        embeddings … L top), L+1 for the head and scalar mix."""
        if name.startswith("encoder."):
            return self.encoder.layer_depth(name.removeprefix("encoder."))
        return self.cfg.num_layers + 1

    def in_head(self, name: str) -> bool:
        """Whether weight `name` belongs to the task's head: outside the encoder, or, under a
        pooled head, an encoder weight at the head's depth (ELECTRA's pooler: the classifier's
        dense layer, trained from scratch). What trains beside adapters, and what an adapter
        version stores."""
        if not name.startswith("encoder."):
            return True
        return self.layout == "pooled" and self.layer_depth(name) > self.cfg.num_layers

    def flops_per_token(self, seq_len: int) -> float:
        f = (
            self.encoder.flops_per_token(seq_len)
            if hasattr(self.encoder, "flops_per_token")
            else 0.0
        )
        return f / 3 if self.frozen else f  # frozen: forward only
