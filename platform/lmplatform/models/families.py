"""The model families: one row per family, everything the rest of the platform needs of one.

A family is its own module(s) plus one row here: the config class with its presets, the
pretraining model and the encoder a task model keeps (models/bert/model.py, …), its adapters —
Hugging Face layout both ways, tokenizer files, warm-start mapping (models/bert/hf.py, …) —
and its pretraining `Objective`: example builder, collator and summary metrics
(models/bert/pretraining.py, …), which families may share. Code outside a family's own modules
reads these fields and never asks which family it has (tests/models/test_families.py checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal, Union

from pydantic import Field
from torch import nn

from lmplatform.models.bert import hf as bert_hf
from lmplatform.models.bert.model import BertConfig, BertEncoder, BertForPretraining
from lmplatform.models.bert.pretraining import MLM_NSP
from lmplatform.models.electra import hf as electra_hf
from lmplatform.models.electra.model import ElectraConfig, ElectraEncoder, ElectraForPretraining
from lmplatform.models.electra.pretraining import ELECTRA
from lmplatform.models.gpt import hf as gpt_hf
from lmplatform.models.gpt.model import GPT, GPTConfig
from lmplatform.models.gpt.pretraining import CAUSAL_LM
from lmplatform.models.interop import HFAdapter, TokenizerFiles, WarmStart
from lmplatform.models.lstm.model import BiLM, LSTMConfig
from lmplatform.models.objective import Objective
from lmplatform.models.transformer import hf as transformer_hf
from lmplatform.models.transformer.model import Transformer, TransformerConfig


@dataclass(frozen=True)
class Family:
    name: str
    """The `family` key of its config."""
    config: type
    """Its pydantic config class, with the presets."""
    pretraining: type[nn.Module]
    """The model pretraining trains, built from the config."""
    encoder: type[nn.Module]
    """The part a task model keeps, built from the config."""
    encoder_of: Callable[[nn.Module], nn.Module]
    """Pretraining model -> its encoder (shared weights, not a copy)."""
    tokenizer: Literal["wordpiece", "bpe", "joint_bpe"]
    """The tokenizer kind it is trained with."""
    tokenizer_files: TokenizerFiles
    """What transformers' tokenizer needs besides tokenizer.json (written for every family)."""
    objective: Objective | None
    """How it pretrains on a corpus: example builder, collator, the metrics that summarize a
    run. None: it does not (see `why_not`)."""
    hf: HFAdapter | None
    """Its transformers layout both ways. None: no transformers class computes it (saved
    under our own weight names)."""
    warm_start: WarmStart | None
    """How its weights start the encoder-decoder. None: they cannot."""
    whole_model_task: str | None
    """The task type its pretraining model itself is (saved as that task's model, no head);
    None: a task model is its encoder with a task head."""
    layer_mix: bool
    """Task heads read a learned scalar mix of all its layers (ELMo), not the top one."""
    pooled_head_bias: bool
    """A sequence (pooled) head has a bias; transformers' GPT2ForSequenceClassification's
    `score` has none, and the exported model must match it."""
    serves: frozenset[str]
    """The pretrained-model routes its models answer (`fill-mask`, `generate`)."""
    why_not: dict[str, str] = field(default_factory=dict)
    """field -> why it is None for this family."""


_HEAD_ON_ENCODER = "a task model is its encoder with a task head"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="bert",
            config=BertConfig,
            pretraining=BertForPretraining,
            encoder=BertEncoder,
            encoder_of=lambda m: m.bert,
            tokenizer="wordpiece",
            tokenizer_files=bert_hf.TOKENIZER_FILES,
            objective=MLM_NSP,
            hf=bert_hf.HF,
            warm_start=bert_hf.WARM_START,
            whole_model_task=None,
            layer_mix=False,
            pooled_head_bias=True,
            serves=frozenset({"fill-mask"}),
            why_not={"whole_model_task": _HEAD_ON_ENCODER},
        ),
        Family(
            name="electra",
            config=ElectraConfig,
            pretraining=ElectraForPretraining,
            encoder=ElectraEncoder,
            encoder_of=lambda m: m.electra,  # the discriminator
            tokenizer="wordpiece",
            tokenizer_files=electra_hf.TOKENIZER_FILES,
            objective=ELECTRA,
            hf=electra_hf.HF,
            warm_start=electra_hf.WARM_START,
            whole_model_task=None,
            layer_mix=False,
            pooled_head_bias=True,
            serves=frozenset(),
            why_not={"whole_model_task": _HEAD_ON_ENCODER},
        ),
        Family(
            name="gpt",
            config=GPTConfig,
            pretraining=GPT,
            encoder=GPT,
            encoder_of=lambda m: m,
            tokenizer="bpe",
            tokenizer_files=gpt_hf.TOKENIZER_FILES,
            objective=CAUSAL_LM,
            hf=gpt_hf.HF,
            warm_start=gpt_hf.WARM_START,
            whole_model_task=None,
            layer_mix=False,
            pooled_head_bias=False,
            serves=frozenset({"generate"}),
            why_not={"whole_model_task": _HEAD_ON_ENCODER},
        ),
        Family(
            name="lstm",
            config=LSTMConfig,
            pretraining=BiLM,
            encoder=BiLM,
            encoder_of=lambda m: m,
            tokenizer="bpe",
            tokenizer_files=gpt_hf.TOKENIZER_FILES,  # the same byte-level BPE
            objective=CAUSAL_LM,  # blocks read in both directions
            hf=None,
            warm_start=None,
            whole_model_task=None,
            layer_mix=True,
            pooled_head_bias=True,
            serves=frozenset(),
            why_not={
                "hf": "the ELMo-style biLM has no transformers counterpart",
                "warm_start": "its recurrent layers have no counterpart in a Transformer",
                "whole_model_task": _HEAD_ON_ENCODER,
            },
        ),
        Family(
            name="transformer",
            config=TransformerConfig,
            pretraining=Transformer,
            encoder=Transformer,
            encoder_of=lambda m: m,
            tokenizer="joint_bpe",
            tokenizer_files=transformer_hf.TOKENIZER_FILES,
            objective=None,
            hf=transformer_hf.HF,
            warm_start=None,
            whole_model_task="seq2seq",
            layer_mix=False,
            pooled_head_bias=True,
            serves=frozenset(),
            why_not={
                "objective": "is an encoder-decoder: it trains on parallel text as a seq2seq "
                "task (jobs/finetune.py with task.type: seq2seq), not on a corpus",
                "warm_start": "it is the encoder-decoder the others warm-start",
            },
        ),
    )
}


ModelConfig = Annotated[
    Union[tuple(f.config for f in FAMILIES.values())],  # noqa: UP007 - built from the table
    Field(discriminator="family"),
]
"""Any family's config, selected by its `family` key."""


def family(cfg_or_name) -> Family:
    """The row of a family name or of a config (anything with a `family` field)."""
    name = cfg_or_name if isinstance(cfg_or_name, str) else cfg_or_name.family
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def objectives() -> dict[str, Objective]:
    """The pretraining objectives of the families, by name."""
    return {f.objective.name: f.objective for f in FAMILIES.values() if f.objective is not None}


def hf_family(model_type: str, source: str) -> Family:
    """The family whose transformers checkpoints have this `model_type` (others refused by
    name)."""
    known = {
        f.hf.model_type: f
        for f in FAMILIES.values()
        if f.hf is not None and f.hf.from_config is not None
    }
    if model_type not in known:
        raise ValueError(
            f"{source}: model_type {model_type!r} cannot be imported (supported: "
            f"{', '.join(known)}: checkpoints of those transformers families)"
        )
    return known[model_type]


def families_serving(route: str) -> list[str]:
    """The families whose pretrained models answer a route."""
    return [f.name for f in FAMILIES.values() if route in f.serves]


def objective_of(objective: Objective | str) -> Objective:
    """An objective, or one named by its `name` (as stored in manifests and run configs)."""
    if isinstance(objective, Objective):
        return objective
    known = objectives()
    if objective not in known:
        raise ValueError(f"unknown pretraining objective {objective!r} (known: {', '.join(known)})")
    return known[objective]
