"""What every task type provides, and the pieces task types share.

A task type is one object (one module under lmplatform/tasks/) answering, for its kind of task:
which metrics score it and how its config is checked; how a file record becomes training rows;
how rows become a batch; which head layout the model gets; how predictions are scored; and, for
serving, which JSON one input is, how it is checked (`InputError`, answered with 422) and how
the model's output is read back. Finetune, serving and the HTTP API dispatch through the table
in lmplatform/tasks/__init__.py and branch on no task name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from lmplatform.metrics import Counts

# a token covers at least one character: text beyond this many characters per position can
# never reach the model, so it is cut before tokenizing (keeps a 1 MB string cheap)
CHARS_PER_POSITION = 64
EMPTY_SCORES = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


class InputError(ValueError):
    """An input the model cannot take (wrong shape for the task, empty text): HTTP 422."""


def check_text(value, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: empty text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: text is not valid Unicode (lone surrogate)") from None
    return value


def parse_text(x, where: str, max_len: int) -> tuple[str, bool]:
    """A checked text, cut where no token could reach the model; whether anything was cut."""
    t = check_text(x, where)
    limit = max_len * CHARS_PER_POSITION
    return t[:limit], bool(t[limit:].strip())


@dataclass
class Item:
    """One validated serving input."""

    text: str | None = None
    pair: str | None = None
    words: list[str] | None = None
    spans: list[tuple[int, int]] | None = None  # character offsets of words in `text`
    cut: bool = False  # words or characters dropped before tokenizing
    n_words: int = 0  # words in the input (word tasks): one label each, even past the cut
    predicate: int | None = None  # SRL: the predicate's word index
    options: dict = field(default_factory=dict)  # seq2seq: num_beams, max_new_tokens


@dataclass
class Encoding:
    """One item as model input: ids, type ids, word per token (word tasks), head inputs."""

    ids: list[int]
    types: list[int]
    word_ids: list | None = None
    truncated: bool = False
    extra: dict[str, int] = field(default_factory=dict)


class Scorer:
    """Collects a task's predictions batch by batch; `result` gives the metrics."""

    def add(self, logits: torch.Tensor, batch: dict, rows: list[dict]) -> None:
        raise NotImplementedError

    def add_labels(self, predicted: list, rows: list[dict]) -> None:
        """Predictions made without a model (a baseline's), one per row in the form the type's
        `baseline_predictions` returns, scored exactly as a model's are."""
        raise NotImplementedError

    def counts(self) -> Counts:
        """Summable statistics of the rows added so far (lmplatform.metrics.Counts): a sharded
        evaluation adds every rank's and scores the sum with `result_of`."""
        raise NotImplementedError

    def result_of(self, counts: Counts) -> tuple[dict[str, float], dict[str, dict]]:
        """(metrics, precision/recall/F1/support per class) of `counts`."""
        raise NotImplementedError

    def result(self) -> tuple[dict[str, float], dict[str, dict]]:
        """(metrics, precision/recall/F1/support per class) of the rows added so far."""
        return self.result_of(self.counts())


class TaskType:
    name: ClassVar[str]
    layout: ClassVar[str]
    """Head layout (lmplatform.models.heads)."""
    metrics: ClassVar[tuple[str, ...]]
    """Metric names it can be selected by (the first is the default)."""
    class_metric: ClassVar[bool] = False
    """'f1/<class>' may be the selection metric."""
    file_format: ClassVar[str | None] = None
    """The format `auto` falls back to when neither the extension nor the first lines tell
    (a .txt file; None: the user is asked to set one)."""
    columns: ClassVar[dict[str, str]]
    """Row columns: 'string', 'strings', 'int' (the dataset's schema)."""
    input_schema: ClassVar[Any]
    """JSON shape of one serving input (a type pydantic validates)."""
    prediction_schema: ClassVar[Any]
    """Pydantic model of one prediction."""
    smoke_input: ClassVar[Any]
    """An input any model of the type must answer before it goes live."""
    accepts_split_words: ClassVar[bool] = False
    """Serving takes `is_split_into_words` (inputs as word lists)."""
    whole_model: ClassVar[bool] = False
    """The task model is a whole model of its family (the encoder-decoder for seq2seq), not
    an encoder with a head."""
    generates: ClassVar[bool] = False
    """Scoring decodes with the model: a number of forward passes that depends on the rows."""
    baseline: ClassVar[str | None] = None
    """The classic model fitted beside every search, in words (None: the type has none);
    lmplatform/tasks/baseline.py."""

    # ------------------------------------------------------------------ config and data

    def check_config(self, task) -> None:
        """Raise ValueError when the task config does not fit the type."""

    def check_source(self, source):
        """The data source as this type reads it; DataError if unusable."""
        return source

    def rows(
        self, rec: dict, source, labels: list[str] | None
    ) -> Iterator[tuple[dict, str | None]]:
        """Training rows from one file record, each with None or why it is unusable."""
        raise NotImplementedError

    def finish(self, ds, labels: list[str] | None):
        """Good rows -> (rows with encoded labels, the label set)."""
        raise NotImplementedError

    def label_counts(self, ds, outputs: list[str]) -> dict[str, int]:
        """How often each label occurs in encoded rows (what the data report shows; {}: the
        type has no labels)."""
        return {}

    def outputs(self, labels: list[str], label_names: list[str] | None) -> list[str]:
        """Names of the head's outputs."""
        return list(label_names or labels)

    def classes(self, labels: list[str], label_names: list[str] | None) -> list[str]:
        """What per-class scores are keyed by."""
        return list(label_names or labels)

    # ------------------------------------------------------------------ model

    def collate(self, enc, rows: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def scorer(
        self,
        outputs: list[str],
        classes: list[str],
        *,
        model=None,
        encoder=None,
        task=None,
        final: bool = False,
    ) -> Scorer:
        """A scorer for one evaluation. Types that score generated output (seq2seq) decode
        with `model` and `encoder` (the TaskEncoder) as `task` (its TaskConfig) says; `final`:
        the promoted score (beam search), not a search's quick one."""
        raise NotImplementedError

    def baseline_predictions(
        self, train_rows: list[dict], dev_rows: list[dict], outputs: list[str]
    ) -> list:
        """The baseline fitted on `train_rows` (encoded rows, as trials get them): its
        prediction for each of `dev_rows`, in the form the type's `Scorer.add_labels` takes."""
        raise NotImplementedError

    # ------------------------------------------------------------------ serving

    def check_options(self, options: dict) -> None:
        """A request's options (num_beams, …) against the type: InputError (422) when one
        does not apply or is out of bounds."""
        for name in ("num_beams", "max_new_tokens"):
            if options.get(name) is not None:
                raise InputError(f"{name} is only for seq2seq tasks (this one is {self.name})")

    def parse(self, x, where: str, max_len: int, options: dict) -> Item:
        raise NotImplementedError

    def encode(self, enc, item: Item) -> Encoding:
        raise NotImplementedError

    def decode(
        self, item: Item, probs: torch.Tensor, encoding: Encoding, outputs: list[str]
    ) -> dict:
        raise NotImplementedError


def class_f1(per_class: dict[str, dict]) -> dict[str, float]:
    """Per-class F1 as the flat `f1/<class>` values a search records (and `task.metric` may
    name)."""
    return {f"f1/{label}": v["f1"] for label, v in per_class.items()}


def pad_labels(labels: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(labels), width), -100, dtype=torch.long)
    for i, row in enumerate(labels):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
