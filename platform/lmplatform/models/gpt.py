"""GPT: a decoder-only causal Transformer language model.

This module holds the family's config and presets; it imports no Ray, DeepSpeed or
torch.distributed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmplatform.config import StrictModel
from lmplatform.models._preset import fill_from_preset

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
