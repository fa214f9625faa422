"""The `task:` section of a fine-tuning config, checked against its task type."""

from __future__ import annotations

from pydantic import Field, model_validator

from lmplatform.config import Name, StrictModel
from lmplatform.data.sources import DataSource
from lmplatform.tasks import TASK_TYPES, task_type
from lmplatform.tasks.seq2seq import DecodingConfig


class TaskConfig(StrictModel):
    name: str = Name
    """Task name: the registry key and the serving route `/v1/predict/<name>`."""
    type: str
    """A task type: classification, pair_classification, token_classification, srl or seq2seq
    (the table in lmplatform/tasks/__init__.py)."""
    train: DataSource
    """Training rows."""
    dev: DataSource
    """Rows for model selection and the promoted metric."""
    labels: list[str] | None = None
    """Label names (classification), entity types (token classification) or semantic roles
    (srl; roles outside the list are not learned); null: every one found in the training data."""
    labels_are_indices: bool = False
    """Classification: the label column holds 0-based positions in `labels` ('0' is labels[0])
    rather than the labels themselves. Off, a label not in `labels` is a bad row, never read as
    an index."""
    label_names: list[str] | None = None
    """Display names for the labels, in the order of `labels` (e.g. '0','1' -> negative, positive)."""
    metric: str | None = None
    """Metric to maximise (null: the type's first). classification: accuracy, macro_f1, or
    f1/<class>, the F1 of one class (e.g. f1/spam, where the class that matters is rare);
    token_classification: entity_f1; srl: argument_f1; seq2seq: bleu or chrf."""
    max_seq_len: int = Field(128, ge=8, le=65536)
    """Inputs are truncated to this many tokens."""
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    """Fail the run if more than this fraction of rows is unusable."""
    max_train_rows: int | None = Field(None, ge=1)
    """Train on a fixed random subset of this many rows (null: all) — for budgeted CPU runs."""
    decoding: DecodingConfig | None = None
    """seq2seq only: beam search for the final dev score and serving, and the request limits
    (null: the defaults)."""

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        tt = task_type(self.type)  # an unknown type is named with the known ones
        tt.check_config(self)
        if self.decoding is not None and not tt.whole_model:
            raise ValueError(f"`decoding` is for seq2seq tasks, not {self.type}")
        if self.decoding is None and tt.whole_model:
            self.decoding = DecodingConfig()  # (assignment re-runs this validator)
        if self.metric is None:
            self.metric = tt.metrics[0]
        if self.labels_are_indices and (not tt.class_metric or self.labels is None):
            raise ValueError(
                "labels_are_indices needs a classification task with `labels` (what each index means)"
            )
        if self.label_names is not None:
            if self.labels is None or len(self.label_names) != len(self.labels):
                raise ValueError("label_names needs `labels`, one display name per label")
        if self.metric.startswith("f1/"):
            # F1 of one class (e.g. spam): named by its display name, or its label if none
            names = self.label_names or self.labels
            target = self.metric[3:]
            if not tt.class_metric or names is None or target not in names:
                raise ValueError(
                    f"metric={self.metric!r}: 'f1/<class>' needs a classification task whose "
                    f"labels (or label_names) include {target!r}"
                )
        elif self.metric not in tt.metrics:
            others = [n for n, t in TASK_TYPES.items() if self.metric in t.metrics]
            raise ValueError(
                f"metric={self.metric!r} does not score {self.type} tasks (use "
                f"{' or '.join(tt.metrics)}"
                + (f"; {self.metric} is for {', '.join(others)}" if others else "")
                + ")"
            )
        return self
