"""Model families in plain PyTorch, one file per family; nothing here imports Ray or DeepSpeed."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from lmplatform.models.bert import BertConfig
from lmplatform.models.gpt import GPTConfig
from lmplatform.models.lstm import LSTMConfig
from lmplatform.models.transformer import TransformerConfig

ModelConfig = Annotated[
    BertConfig | GPTConfig | LSTMConfig | TransformerConfig, Field(discriminator="family")
]
"""Any family's config, selected by its `family` key."""

__all__ = ["BertConfig", "GPTConfig", "LSTMConfig", "ModelConfig", "TransformerConfig"]
