"""Task heads by layout: what a task model computes from its encoder's hidden states.

A task type (lmplatform.tasks) picks one layout; the layout is stored with the model, so a saved
task model is rebuilt from the models layer alone. Each head is an `nn.Linear` subclass, so its
weights are `head.weight` / `head.bias` whatever the layout (the transformers mapping relies on
that).

- `pooled`: one vector per input (BERT's pooler when fine-tuned, the mean over real tokens on
  frozen features, since a frozen pooler is tuned to NSP and nearly constant across sentences);
- `token`: every position;
- `predicate`: every position, concatenated with the hidden state of one marked position (the
  predicate of semantic role labelling), plus a learned bias per label and distance to it, so
  the same words get other labels for another predicate.
"""

from __future__ import annotations

import torch
from torch import nn

from lmplatform.models.layers import Encoded, masked_mean


class _Head(nn.Linear):
    layout = ""

    def __init__(self, hidden: int, num_labels: int, bias: bool = True):
        super().__init__(self.in_features_for(hidden), num_labels, bias=bias)
        nn.init.normal_(self.weight, std=0.02)
        if bias:
            nn.init.zeros_(self.bias)

    @staticmethod
    def in_features_for(hidden: int) -> int:
        return hidden

    def logits(self, h, enc: Encoded, attention_mask, drop: nn.Module, frozen: bool, **inputs):
        raise NotImplementedError


class PooledHead(_Head):
    layout = "pooled"

    def logits(self, h, enc, attention_mask, drop, frozen, **inputs):
        use_pooler = enc.pooled is not None and not frozen
        pooled = enc.pooled if use_pooler else masked_mean(h, attention_mask)
        return self(drop(pooled))  # (B, L)


class TokenHead(_Head):
    layout = "token"

    def logits(self, h, enc, attention_mask, drop, frozen, **inputs):
        return self(drop(h))  # (B, T, L)


class PredicateHead(_Head):
    layout = "predicate"
    max_distance = 16
    """Relative positions beyond this share one bias (in sub-tokens, either side)."""

    def __init__(self, hidden: int, num_labels: int, bias: bool = True):
        super().__init__(hidden, num_labels, bias)
        # a bias per role and distance to the predicate: roles sit at typical distances
        # (ARG0 before, ARG1 after), a cue features alone carry only through the encoder
        self.distance = nn.Embedding(2 * self.max_distance + 1, num_labels)
        nn.init.zeros_(self.distance.weight)

    @staticmethod
    def in_features_for(hidden: int) -> int:
        return 2 * hidden

    def logits(self, h, enc, attention_mask, drop, frozen, predicate_pos=None, **inputs):
        if predicate_pos is None:
            raise ValueError("a predicate head needs `predicate_pos` (one position per row)")
        predicate_pos = predicate_pos.to(h.device)
        rows = torch.arange(h.shape[0], device=h.device)
        hp = h[rows, predicate_pos]  # (B, H)
        pair = torch.cat([h, hp[:, None, :].expand_as(h)], dim=-1)
        k = self.max_distance
        rel = torch.arange(h.shape[1], device=h.device)[None, :] - predicate_pos[:, None]
        return self(drop(pair)) + self.distance(rel.clamp(-k, k) + k)  # (B, T, L)


HEADS: dict[str, type[_Head]] = {c.layout: c for c in (PooledHead, TokenHead, PredicateHead)}
