"""ELECTRA (Clark et al., ICLR 2020): BERT's encoder pretrained by replaced-token detection.

A small masked-LM generator fills the masked positions with its own samples; the discriminator
(the model that is kept) learns, at every position rather than the 15 % that are masked, whether
a token is the original or a replacement. The two share their embeddings (word, position,
segment and their LayerNorm); the generator is narrower (`generator_fraction` of the width,
heads and feed-forward, all layers) and is trained by its masked-LM loss alone, as sampling
passes no gradient. The loss is the generator's + `discriminator_weight` x the discriminator's
(the paper's 50).

The discriminator is BERT's encoder with two differences transformers' `ElectraModel` has too:
the embeddings may be narrower than the hidden width (`embedding_size`, projected up, as in
ELECTRA-Small), and a sequence classifier reads GELU(dense([CLS])) instead of BERT's tanh
pooler. This module imports no Ray, DeepSpeed or torch.distributed.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from lmplatform.models._preset import fill_from_preset
from lmplatform.models.bert.model import PRESETS as BERT_PRESETS
from lmplatform.models.bert.model import BertConfig, BertEncoder, BertLayer
from lmplatform.models.layers import (
    LayerStack,
    init_weights,
    linear_cross_entropy,
    padding_mask,
)

PRESETS: dict[str, dict] = {
    # `mini` is BERT's: the same encoder as `bert` mini, so the two objectives compare like for like
    **{size: BERT_PRESETS[size] for size in ("debug", "mini", "base")},
    # ELECTRA-Small (Clark et al. 2020, table 6): 14M parameters with BERT's vocabulary
    "small": dict(
        hidden_size=256,
        num_layers=12,
        num_heads=4,
        intermediate_size=1024,
        embedding_size=128,
        max_seq_len=512,
    ),
}


class ElectraConfig(BertConfig):
    family: Literal["electra"] = "electra"  # type: ignore[assignment]
    """Model family (selects this config)."""
    embedding_size: int | None = Field(None, ge=8, le=16384)
    """Width of the (shared) embeddings; None: the hidden width. Narrower embeddings are
    projected up, by the discriminator and by the generator each."""
    generator_fraction: float = Field(0.25, gt=0.0, le=1.0)
    """The generator's width, heads and feed-forward as a fraction of the discriminator's
    (the paper finds 1/4 to 1/2 best: a stronger generator makes the task too hard)."""
    discriminator_weight: float = Field(50.0, gt=0.0, le=1000.0)
    """Weight of the replaced-token loss against the generator's masked-LM loss (the paper's
    lambda = 50: the binary loss is much smaller)."""

    _presets = model_validator(mode="before")(lambda data: fill_from_preset(data, PRESETS))

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    def generator(self) -> BertConfig:
        """The generator's encoder dimensions (its embeddings are the discriminator's)."""
        heads = max(1, round(self.num_heads * self.generator_fraction))
        hidden = max(heads, round(self.hidden_size * self.generator_fraction))
        hidden -= hidden % heads
        return BertConfig(
            size="debug",
            vocab_size=self.vocab_size,
            hidden_size=hidden,
            num_layers=self.num_layers,
            num_heads=heads,
            intermediate_size=max(8, round(self.intermediate_size * self.generator_fraction)),
            max_seq_len=self.max_seq_len,
            type_vocab_size=self.type_vocab_size,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            layer_norm_eps=self.layer_norm_eps,
            initializer_range=self.initializer_range,
        )


class ElectraEncoder(BertEncoder):
    """The discriminator: transformers' `ElectraModel` (BERT's layers, embeddings of
    `embedding_size` projected up when narrower, no pooler of its own); `pooler` here is the
    sequence classifier's dense layer (`classifier.dense` in transformers)."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__(cfg)
        e = cfg.embedding_width
        self.emb_proj = None
        if e != cfg.hidden_size:
            self.tok_emb = nn.Embedding(cfg.vocab_size, e)
            self.pos_emb = nn.Embedding(cfg.max_seq_len, e)
            self.type_emb = nn.Embedding(cfg.type_vocab_size, e)
            self.emb_ln = nn.LayerNorm(e, eps=cfg.layer_norm_eps)
            self.emb_proj = nn.Linear(e, cfg.hidden_size)
            for m in (self.tok_emb, self.pos_emb, self.type_emb, self.emb_ln, self.emb_proj):
                init_weights(m, cfg.initializer_range)

    def shared_embeddings(self, input_ids, token_type_ids=None) -> torch.Tensor:
        """The embeddings the generator shares, before any projection: (B, T, E)."""
        return super().embed(input_ids, token_type_ids)

    def embed(self, input_ids, token_type_ids=None) -> torch.Tensor:
        x = self.shared_embeddings(input_ids, token_type_ids)
        return x if self.emb_proj is None else self.emb_proj(x)  # (B, T, C)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        # ElectraClassificationHead: dropout, dense, GELU (BERT's pooler has tanh, no dropout)
        return F.gelu(self.pooler(self.drop(h[:, 0])))  # (B, C)

    def layer_depth(self, name: str) -> int:
        # the pooler is the classifier's dense layer, trained from scratch with the head (L + 1),
        # not a pretrained layer on top of the encoder as BERT's is
        if name.startswith("pooler."):
            return self.cfg.num_layers + 1
        return 0 if name.startswith("emb_proj.") else super().layer_depth(name)


class ElectraGenerator(LayerStack, nn.Module):
    """The masked-LM generator on the discriminator's embeddings: its own projection (when
    the embeddings are not its width), layers, and an LM head tied to the word embeddings."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        g = cfg.generator()
        e = cfg.embedding_width
        self.proj = nn.Linear(e, g.hidden_size) if e != g.hidden_size else None
        self.layers = nn.ModuleList(BertLayer(g) for _ in range(g.num_layers))
        self.mlm_dense = nn.Linear(g.hidden_size, e)
        self.mlm_ln = nn.LayerNorm(e, eps=g.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(lambda m: init_weights(m, cfg.initializer_range))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Shared embeddings (B, T, E) -> hidden states (B, T, generator width)."""
        if self.proj is not None:
            x = self.proj(x)
        for layer in self.layers:
            x = self.run_layer(layer, x, mask)
        return x

    def transform(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states -> the LM head's input (E wide), before the tied projection."""
        return self.mlm_ln(F.gelu(self.mlm_dense(h)))


class ElectraForPretraining(nn.Module):
    """Generator + discriminator, trained together by replaced-token detection."""

    def __init__(self, cfg: ElectraConfig):
        super().__init__()
        self.cfg = cfg
        self.electra = ElectraEncoder(cfg)
        self.generator = ElectraGenerator(cfg)
        self.disc_dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.disc_out = nn.Linear(cfg.hidden_size, 1)
        for m in (self.disc_dense, self.disc_out):
            init_weights(m, cfg.initializer_range)

    def discriminator_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states -> "this token was replaced" logits (B, T)."""
        return self.disc_out(F.gelu(self.disc_dense(h))).squeeze(-1)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        mlm_positions=None,
        mlm_labels=None,
        original_ids=None,
        labels=None,
        **_,
    ):
        """Losses and metrics as device tensors, from the masked batch of the MLM collator
        (`models/bert/pretraining.py`: `mlm_positions` / `mlm_labels`, and `original_ids`, the
        unmasked tokens; from `labels` when the positions are missing, and from the masked
        tokens and their targets when the original is)."""
        if mlm_positions is None:
            if labels is None:
                raise ValueError("ELECTRA needs the masked positions (mlm_positions or labels)")
            sel = (labels != -100).flatten()
            mlm_positions, mlm_labels = sel.nonzero().flatten(), labels.flatten()[sel]
        if original_ids is None:  # the unmasked tokens: the targets written back in place
            original_ids = self._corrupt(input_ids, mlm_positions, mlm_labels, mlm_labels)
        out: dict[str, torch.Tensor] = {}
        gen_loss, sampled = self._generate(
            input_ids, attention_mask, token_type_ids, mlm_positions, mlm_labels, out
        )
        corrupted = self._corrupt(input_ids, mlm_positions, mlm_labels, sampled)
        disc_loss = self._discriminate(corrupted, original_ids, attention_mask, token_type_ids, out)
        out["loss"] = gen_loss + self.cfg.discriminator_weight * disc_loss
        return out

    def _generate(self, input_ids, attention_mask, token_type_ids, positions, targets, out):
        """The generator's masked-LM loss, and a token sampled from it at every masked
        position (no gradient flows through the sample)."""
        x = self.electra.shared_embeddings(input_ids, token_type_ids)
        h = self.generator(x, padding_mask(attention_mask))  # (B, T, Cg)
        t = self.generator.transform(h.flatten(0, 1).index_select(0, positions))  # (M, E)
        weight = self.electra.tok_emb.weight
        loss, acc = linear_cross_entropy(t, weight, self.generator.mlm_bias, targets)
        out["mlm_loss"], out["mlm_acc"] = loss.detach(), acc
        out["predicted_tokens"] = (targets != -100).sum().detach()
        with torch.no_grad():
            sampled = torch.cat(
                [
                    _sample(F.linear(c, weight, self.generator.mlm_bias))
                    for c in t.detach().split(4096)  # (M, V) logits in bounded chunks
                ]
            )
        return loss, sampled

    @staticmethod
    def _corrupt(input_ids, positions, targets, sampled) -> torch.Tensor:
        """The masked input with the generator's samples at the predicted positions. The
        position list's padding (target -100) writes into one spare slot past the end, dropped
        after: pointed at a real position it would race the real write there."""
        flat = torch.cat([input_ids.flatten(), input_ids.new_zeros(1)])
        spare = torch.full_like(positions, flat.numel() - 1)
        where = torch.where(targets != -100, positions, spare)
        return flat.index_copy(0, where, sampled.to(flat.dtype))[:-1].view_as(input_ids)

    def _discriminate(self, corrupted, original, attention_mask, token_type_ids, out):
        """Binary cross-entropy of "replaced" at every real token: a sample that happens to be
        the original counts as original, as in the paper."""
        h = self.electra(corrupted, attention_mask, token_type_ids)  # (B, T, C)
        logits = self.discriminator_logits(h).float()
        replaced = (corrupted != original).float()
        real = torch.ones_like(logits) if attention_mask is None else attention_mask.float()
        per_token = F.binary_cross_entropy_with_logits(logits, replaced, reduction="none")
        n = real.sum().clamp(min=1)
        loss = (per_token * real).sum() / n
        out["rtd_loss"] = loss.detach()
        out["rtd_acc"] = (((logits > 0).float() == replaced).float() * real).sum().detach() / n
        out["replaced"] = (replaced * real).sum().detach() / n
        return loss

    def flops_per_token(self, seq_len: int, mlm_fraction: float = 0.15) -> float:
        c, g = self.cfg, self.cfg.generator()
        e = c.embedding_width
        gen_layer = 4 * g.hidden_size**2 + 2 * g.hidden_size * g.intermediate_size
        gen = 6 * g.num_layers * gen_layer + 12 * g.num_layers * g.hidden_size * seq_len
        # LM head at the masked positions; sampling runs it forward once more (no backward)
        head = (6 + 2) * mlm_fraction * (g.hidden_size * e + e * c.vocab_size)
        return self.electra.flops_per_token(seq_len) + gen + head + 6 * c.hidden_size**2


def _sample(logits: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax(logits) (Gumbel-max: no device sync, unlike
    `torch.multinomial` on some backends)."""
    u = torch.rand_like(logits, dtype=torch.float32).clamp_(1e-9, 1.0)
    return (logits.float() - torch.log(-torch.log(u))).argmax(-1)
