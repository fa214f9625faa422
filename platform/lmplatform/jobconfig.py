"""What every job config shares: `JobConfig` (output folder, registry, tracking) and the
check of a model reference. Each job config lives with its stage and subclasses it:
`pretraining/config.py` (PretrainJobConfig), `tune/config.py` (FinetuneJobConfig),
`pipeline/config.py` (PipelineConfig); serving's `ServeConfig` is in `serving/config.py`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, PlainSerializer, PlainValidator, WithJsonSchema, model_validator

from lmplatform.config import StrictModel
from lmplatform.registry.store import Registry
from lmplatform.tracking import TrackingConfig, mlflow_uri

RegistryRoot = Annotated[
    Registry,
    PlainValidator(lambda root: _open_registry(root)),
    PlainSerializer(lambda r: r.written, return_type=str),
    WithJsonSchema({"type": "string"}),
]
"""A registry root in a config: written as a path or URI, held as an opened `Registry`, dumped
back as written (config hashes, `key=value` overrides, the dicts Ray ships to workers)."""


def _open_registry(root) -> Registry:
    """A storage problem (an unknown scheme, s3:// without its extra) as a config error: one
    line naming the field, not a traceback."""
    from lmplatform.storage import StorageError

    try:
        return Registry(root)
    except StorageError as e:
        raise ValueError(str(e)) from None


class JobConfig(StrictModel):
    """What every job config shares (pretraining, fine-tuning search, the pipeline): where it
    writes, the registry it reads and writes, where it is tracked."""

    output_dir: str = "runs"
    """Local or shared folder (s3://…) for the job's outputs: run folders, checkpoints, plots,
    reports; absolute under `ray job submit`."""
    registry: RegistryRoot = Field("registry", validate_default=True)
    """Model registry root (local path or s3:// / gs:// URI)."""
    tracking: TrackingConfig | None = None
    """Log runs to MLflow or W&B (none: metrics.jsonl, TensorBoard and the registry only); a
    search tags its promoted run with the registry version."""

    @model_validator(mode="after")
    def _check_tracking(self) -> JobConfig:
        if self.tracking is not None and self.tracking.backend == "mlflow":
            mlflow_uri(self.tracking, self.output_dir)  # a remote output_dir needs tracking.uri
        return self


def check_model_ref(ref: str, what: str) -> None:
    """A registry ref ('name[@version]') or a Hugging Face checkpoint ('hf:<folder or id>')."""
    from lmplatform.registry.store import check_hf_ref, check_ref, is_hf

    if is_hf(ref):
        check_hf_ref(ref, what)
    else:
        check_ref(ref, what)
