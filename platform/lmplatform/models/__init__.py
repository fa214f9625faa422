"""Model families in plain PyTorch, one folder per family (models/<family>/) and one table (families.py); nothing here imports Ray or DeepSpeed."""

from __future__ import annotations

from lmplatform.models.bert.model import BertConfig
from lmplatform.models.electra.model import ElectraConfig
from lmplatform.models.gpt.model import GPTConfig
from lmplatform.models.lstm.model import LSTMConfig
from lmplatform.models.transformer.model import TransformerConfig


def __getattr__(name: str):
    # `ModelConfig` is derived from the family table, which imports the family modules: read
    # it on first use, not while this package is being imported
    if name == "ModelConfig":
        from lmplatform.models.families import ModelConfig

        return ModelConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BertConfig",
    "ElectraConfig",
    "GPTConfig",
    "LSTMConfig",
    "ModelConfig",
    "TransformerConfig",
]
