"""ELMo-style language model: forward and backward recurrent LMs over subword embeddings.

This module holds the family's config and presets; it imports no Ray, DeepSpeed or
torch.distributed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmplatform.config import StrictModel
from lmplatform.models._preset import fill_from_preset

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
    cell: Literal["lstm", "gru"] = "lstm"
    """Recurrent cell type."""
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
