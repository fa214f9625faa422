"""The shapes of a family's adapters, which its row in models/families.py holds.

- `HFAdapter`: the family's Hugging Face `transformers` layout both ways (as torchtitan's
  `state_dict_adapter`): weight names as views of our parameters, config.json, what an imported
  checkpoint may lack. models/hf.py runs the shared mechanics around it.
- `TokenizerFiles`: what `AutoTokenizer` needs besides our tokenizer.json.
- `WarmStart`: how the family's weights start the encoder-decoder (models/warm_start.py).

Each family fills these in its own module (models/bert/hf.py, …). This module imports
nothing of ours, so those modules and the table can all import it; never `transformers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


def require(hf: dict, key: str, want, source: str) -> None:
    """A transformers config.json value our model computes only one way: refused, naming the
    key and what we support, when `hf` sets another (absent: transformers' default, `want`)."""
    got = hf.get(key, want)
    if got != want:
        raise ValueError(f"{source}: {key}={got!r} is not supported (only {want!r})")


def _expressible(model: nn.Module) -> str | None:
    return None


@dataclass(frozen=True)
class HFAdapter:
    model_type: str
    """transformers' `model_type` it writes and (with `from_config`) reads."""
    state: Callable[[nn.Module], dict[str, torch.Tensor]]
    """Pretraining model -> transformers weight name -> a view of our parameter."""
    config: Callable[[nn.Module, dict], dict]
    """(pretraining model, special-token ids) -> its whole config.json (`architectures`
    included)."""
    task_arch: str | None = None
    """Class-name prefix of transformers' task classes (`Bert` -> `BertForTokenClassification`);
    None: no task heads go on this family (it is its own task model)."""
    task_state: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None
    """Task model -> the views of its encoder and head (a head's own extra weights are added
    by hf.py)."""
    encoder_config: Callable[[object, dict], dict] | None = None
    """(encoder config, special-token ids) -> a task model's config.json before labels and
    head class."""
    from_config: Callable[[dict, str], object] | None = None
    """(transformers config.json, source) -> our config; None: checkpoints are not imported."""
    not_expressible: Callable[[nn.Module], str | None] = _expressible
    """Why transformers' class for this family cannot compute this model (None: it can)."""
    prefix: str = ""
    """What transformers' whole-model classes put before the encoder's weight names
    (`bert.`): a bare encoder checkpoint without it is accepted."""
    fresh_ok: tuple[str, ...] = ()
    """Name prefixes an imported checkpoint may lack (heads): they keep their initialisation."""
    ignored: tuple[str, ...] = ()
    """Name suffixes of its checkpoints' buffers and tied copies, which we do not load."""
    vocab_tokenizer: Callable[[Path, dict], str | None] | None = None
    """(folder, tokenizer_config.json) -> tokenizer.json text from the family's older vocabulary
    files, or None (byte-level BPE vocab.json + merges.txt are read for every family)."""
    fill_unstored: Callable[[nn.Module, dict], None] | None = None
    """(task model, its views) before loading: a fixed value for encoder weights its layout
    does not store, so reloaded encoders compare equal."""


@dataclass(frozen=True)
class TokenizerFiles:
    tokens: Callable[[dict[str, str | None]], dict[str, str]]
    """Our special-token strings (`pad_token`, `eos_token`, …) -> the ones the family's
    transformers tokenizer names."""
    input_names: tuple[str, ...]
    """`model_input_names`: what the model reads (segment ids only where it has a segment
    embedding)."""


@dataclass(frozen=True)
class WarmStart:
    parts: tuple[str, ...]
    """What its weights can fill (`encoder`, `decoder`, `both`); the first is the default."""
    layout: dict
    """Encoder-decoder config fields that make its layers compute what the family's do
    (activation, LayerNorm placement, embedding LayerNorm)."""
    fill: Callable[[nn.Module, nn.Module, str], None]
    """(encoder-decoder, the family's encoder, part) -> copy the weights in."""
    why: str = ""
    """Why it fills only these parts (named when another is asked for)."""
    refuses: Callable[[object], str | None] = lambda cfg: None
    """A parent config -> why its weights cannot fill an encoder-decoder at all (None: they
    can), asked on the driver before any trial."""
