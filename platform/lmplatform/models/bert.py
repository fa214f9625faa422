"""BERT: a bidirectional Transformer encoder pretrained with masked LM and next-sentence prediction.

This module holds the family's config and presets; it imports no Ray, DeepSpeed or
torch.distributed, so the same code runs in a notebook, a test and a Ray Train worker.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmplatform.config import StrictModel
from lmplatform.models._preset import fill_from_preset

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
