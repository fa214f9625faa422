"""What a family's pretraining objective is made of: the examples config every builder reads,
and the `Objective` a family's table row names (its builder, collator and summary metrics).
The objectives themselves live with their families (`models/bert/pretraining.py`,
`models/gpt/pretraining.py`); the stage that builds shards and feeds workers is
`pretraining/data.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
from pydantic import Field

from lmplatform.config import StrictModel


class ExamplesConfig(StrictModel):
    max_seq_len: int = Field(128, ge=16, le=65536)
    """Tokens per example, special tokens included."""
    short_seq_prob: float = Field(0.1, ge=0.0, le=1.0)
    """BERT: probability of a shorter target length, so the model also sees short inputs."""
    nsp: bool = True
    """BERT: build sentence pairs with next-sentence labels (false: single segments)."""
    nsp_random_prob: float = Field(0.5, ge=0.0, le=1.0)
    """BERT: fraction of B segments taken from a different document."""
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    """BERT: fraction of maskable tokens selected for prediction (drawn per batch)."""
    whole_word_masking: bool = False
    """BERT: select whole words (all their WordPiece pieces) instead of single pieces."""
    dupe_factor: int = Field(1, ge=1, le=100)
    """BERT: build every document's pairs this many times with different segment cuts and random
    B segments (Google's `dupe_factor`), so repeated epochs over a small corpus see new NSP
    pairs instead of memorising one fixed set."""
    docs_per_batch: int = Field(128, ge=2)
    """Documents per Ray Data batch; B segments are drawn from other documents of the batch."""
    rows_per_shard: int = Field(20000, ge=1)
    """Examples per parquet shard (at least)."""
    seed: int = 0
    """Seed for segment and pair sampling (masking has its own seed at training time)."""


def arrow_lists(rows: list, value_type: pa.DataType) -> pa.Array:
    """Plain Arrow list columns (not Ray's tensor extension), readable by any parquet reader."""
    return pa.array([list(r) for r in rows], type=pa.list_(value_type))


def no_stats(files: list[str]) -> dict:
    return {}


@dataclass(frozen=True)
class Objective:
    """A pretraining objective: how documents become examples and examples a batch, and what
    summarizes a run. A family's table row names its objective; families may share one (GPT
    and the biLM both read causal blocks)."""

    name: str
    """Names its example sets (in their manifest and reuse key) and the run's config."""
    builder: type
    """Ray Data callable class: (tokenizer.json text, examples config dict) -> a batch of
    documents -> an Arrow table of examples."""
    collator: Callable[[str, ExamplesConfig, int], Callable[[dict], dict]]
    """(tokenizer.json text, examples config, seed) -> the loader's `collate_fn`; the same seed
    draws the same masks (evaluation uses a fixed one)."""
    metrics: tuple[str, ...]
    """The metrics that summarize a pretraining run (registry metadata keys), in order."""
    shard_stats: Callable[[list[str]], dict] = no_stats
    """Its own counts read back from finished shards, for the manifest."""
    examples_fixed: dict = field(default_factory=dict)
    """Examples settings it always uses (ELECTRA: `nsp: false`): set in the job's config, and
    a config that asks for another value is refused."""
