"""The `search:` section of a fine-tuning config: the space, the scheduler, the budget."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmplatform.config import StrictModel


class SearchDim(StrictModel):
    """One hyperparameter's search range."""

    kind: Literal["loguniform", "uniform", "randint", "choice", "grid"]
    """Distribution (choice/grid take `values`; the others `low` and `high`)."""
    low: float | None = None
    """Lower bound."""
    high: float | None = None
    """Upper bound (exclusive for randint)."""
    values: list | None = None
    """Candidates for choice / grid."""

    @model_validator(mode="after")
    def _check(self) -> SearchDim:
        if self.kind in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.kind} needs a non-empty `values` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high, got low={self.low} high={self.high}")
        elif self.kind == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


SEARCHABLE = (
    "lr",
    "batch_size",
    "epochs",
    "warmup_ratio",
    "weight_decay",
    "dropout",
    "label_smoothing",
    "layer_decay",
    "transfer",
)


class SearchConfig(StrictModel):
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    """Trial scheduler."""
    num_samples: int = Field(8, ge=1)
    """Trials to run."""
    max_time_s: float | None = Field(None, gt=0)
    """Stop the search after this many seconds."""
    max_concurrent: int | None = Field(None, ge=1)
    """Trials at once (null: as many as resources allow)."""
    space: dict[str, SearchDim] = Field(default_factory=dict)
    """Hyperparameter -> range; keys from: lr, batch_size, epochs, warmup_ratio, weight_decay,
    dropout, layer_decay, transfer."""
    seed: int | None = 0
    """Seed of the configurations drawn from `space`: a re-run tries the same ones (null: fresh
    draws each run). Which trials ASHA stops still depends on when results arrive."""
    grace_period: int = Field(1, ge=1)
    """ASHA: evaluations before a trial can be stopped."""
    reduction_factor: float = Field(2.0, gt=1.0)
    """ASHA: keep 1/reduction_factor of trials at each rung."""
    perturbation_interval: int = Field(2, ge=1)
    """PBT: evaluations between exploit/explore steps."""
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5)
    """PBT: the bottom fraction of trials copies the top fraction."""
    eval_rows: int | None = Field(2000, ge=1)
    """Dev rows scored at each trial evaluation (null: all); the winner is scored on all."""

    @model_validator(mode="after")
    def _known(self) -> SearchConfig:
        unknown = sorted(set(self.space) - set(SEARCHABLE))
        if unknown:
            raise ValueError(
                f"space has unknown hyperparameter(s) {unknown} (allowed: {', '.join(SEARCHABLE)})"
            )
        return self
