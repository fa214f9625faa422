"""The pipeline's config: which job configs it runs, with what overrides, and how a stage's
config is hashed (an unchanged hash and output skip the stage)."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field

from lmplatform.config import StrictModel
from lmplatform.jobconfig import JobConfig


class StageRef(StrictModel):
    config: str
    """A job YAML, relative to the project root (the job's working directory)."""
    overrides: list[str] = Field(default_factory=list)
    """key=value overrides applied on top of it."""


class TaskStage(StageRef):
    """A fine-tuning job config, optionally preceded by task-adaptive pretraining."""

    adapt: StageRef | None = None
    """Task-adaptive pretraining (Gururangan et al. 2020) before this task's search: a
    pretraining config (e.g. jobs/configs/pretrain/adapt-cpu.yaml) run from the pipeline's
    pretrained model on the task's own training text, labels unused; it is registered as
    `<pretrained name>-<task>` and the search starts from it. Its `name`, `init_from` and
    `corpus` are set by the pipeline. null: the search starts from the pretrained model."""


class PipelineConfig(JobConfig):
    """A whole pipeline; its `output_dir`, `registry` and `tracking` are every stage's."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Pipeline name: its state and report live in output_dir/<name>/."""
    pretrain: StageRef
    """Pretraining job config (jobs/configs/pretrain/*.yaml)."""
    tasks: list[TaskStage] = Field(default_factory=list)
    """Fine-tuning job configs; each task's parent becomes the pretrained model above."""
    task_overrides: list[str] = Field(default_factory=list)
    """key=value overrides for every task (e.g. a quick run: search.num_samples=2)."""
    serve: StageRef | None = None
    """Serve config (serve/config.yaml) to deploy the promoted tasks with; null: no deployment."""
    examples: dict[str, list] = Field(default_factory=dict)
    """task -> example inputs, sent once the endpoints are up (printed and put in the report)."""


def config_hash(cfg) -> str:
    data = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
    data.pop("tracking", None)  # where a run is logged does not change what it computes
    # nor does the baseline printed beside a search (and state files from before it stay valid)
    data.get("search", {}).pop("baseline", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
