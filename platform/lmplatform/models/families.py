"""The model families: one row per family, everything the rest of the platform branches on.

A new family is one module (config class with presets, pretraining model, encoder with
`encode`, `layer_depth` and `hidden_size`) plus one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from lmplatform.models.bert import BertConfig, BertEncoder, BertForPretraining
from lmplatform.models.gpt import GPT, GPTConfig
from lmplatform.models.lstm import BiLM, LSTMConfig
from lmplatform.models.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class Family:
    name: str
    config: type
    """Its pydantic config class (selected by the `family` key)."""
    pretraining: type[nn.Module]
    """The model pretraining trains, built from the config."""
    encoder: type[nn.Module]
    """The part a task model keeps, built from the config."""
    encoder_of: Callable[[nn.Module], nn.Module]
    """Pretraining model -> its encoder (shared weights, not a copy)."""
    tokenizer: Literal["wordpiece", "bpe", "joint_bpe"]
    """The tokenizer kind it is trained with."""
    objective: Literal["bert", "causal", "seq2seq"]
    """Pretraining examples: sentence pairs for masked LM + NSP, or contiguous blocks for
    language modelling (the biLM reads blocks in both directions); seq2seq: none — the
    encoder-decoder trains on parallel text as a seq2seq task (lmplatform.tasks.seq2seq)."""


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "bert",
            BertConfig,
            BertForPretraining,
            BertEncoder,
            lambda m: m.bert,
            "wordpiece",
            "bert",
        ),
        Family("gpt", GPTConfig, GPT, GPT, lambda m: m, "bpe", "causal"),
        Family("lstm", LSTMConfig, BiLM, BiLM, lambda m: m, "bpe", "causal"),
        Family(
            "transformer",
            TransformerConfig,
            Transformer,
            Transformer,
            lambda m: m,
            "joint_bpe",
            "seq2seq",
        ),
    )
}


def family(cfg_or_name) -> Family:
    name = cfg_or_name if isinstance(cfg_or_name, str) else cfg_or_name.family
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]
