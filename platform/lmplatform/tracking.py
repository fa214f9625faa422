"""Experiment tracking (MLflow or Weights & Biases) through Ray's own integrations.

- Tune searches: `MLflowLoggerCallback` / `WandbLoggerCallback` on the driver log every trial as
  a run (its hyperparameters, every reported metric).
- Pretraining: `setup_mlflow` / `setup_wandb` on the rank-0 worker logs the job's settings and
  the metrics written to metrics.jsonl (a restarted worker opens a new run, tagged with the step
  it resumed from).
- After publishing, the run that produced a registry version is tagged with it
  (`lmplatform.registry_version`, `lmplatform.registry`): from a run to the model and back
  (the registry's metadata names the experiment and trial).

MLflow's default store is a folder, `<output_dir>/mlruns` (`mlflow ui --backend-store-uri
file:<output_dir>/mlruns` shows it). MLflow 3 keeps folder stores only behind
MLFLOW_ALLOW_FILE_STORE=true, which is set for such URIs. With a remote output_dir, or
pretraining on several nodes, name a tracking server (`tracking.uri: http://…`): a folder is
only seen by the machine that writes it.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from lmplatform import storage
from lmplatform.config import StrictModel

TAG_VERSION = "lmplatform.registry_version"
TAG_REGISTRY = "lmplatform.registry"
TAG_JOB = "lmplatform.job"


class TrackingConfig(StrictModel):
    backend: Literal["mlflow", "wandb"] = "mlflow"
    """Where runs are logged."""
    uri: str | None = None
    """MLflow tracking URI (http://server:5000, file:/path, databricks); default: a folder store
    at <output_dir>/mlruns."""
    experiment: str | None = None
    """MLflow experiment / W&B group; default: the job's name."""
    project: str = Field("lmplatform", min_length=1)
    """W&B project."""
    tags: dict[str, str] = {}
    """Extra tags on every run (team, purpose…)."""


def mlflow_uri(cfg: TrackingConfig, output_dir: str) -> str:
    """The tracking URI to use (checked when the config loads, so no side effects here)."""
    if cfg.uri:
        return cfg.uri
    if storage.is_local(output_dir):
        return "file:" + storage.join(storage.normalize(output_dir), "mlruns")
    raise ValueError(
        f"tracking: output_dir {output_dir} is not a local folder, so MLflow cannot keep its "
        "default folder store there: set tracking.uri (an MLflow server, http://…)"
    )


def _allow_folder_store(uri: str | None) -> str | None:
    """MLflow 3 opens folder stores only behind MLFLOW_ALLOW_FILE_STORE (see the module doc)."""
    if uri and (uri.startswith("file:") or "://" not in uri):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    return uri


def _experiment(cfg: TrackingConfig, job_name: str) -> str:
    return cfg.experiment or job_name


def tune_callbacks(cfg: TrackingConfig | None, job_name: str, output_dir: str, tags: dict):
    """Tune callbacks that log every trial (none without a `tracking:` section)."""
    if cfg is None:
        return []
    tags = {TAG_JOB: job_name, **tags, **cfg.tags}
    if cfg.backend == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        return [
            MLflowLoggerCallback(
                tracking_uri=_allow_folder_store(mlflow_uri(cfg, output_dir)),
                experiment_name=_experiment(cfg, job_name),
                tags=tags,
                save_artifact=False,
            )
        ]
    from ray.air.integrations.wandb import WandbLoggerCallback

    return [
        WandbLoggerCallback(
            project=cfg.project, group=_experiment(cfg, job_name), tags=list(tags.values())
        )
    ]


class WorkerRun:
    """The rank-0 worker's run for pretraining: log(metrics, step), then finish()."""

    def __init__(
        self, cfg: TrackingConfig, uri: str | None, job_name: str, params: dict, tags: dict
    ):
        self.backend = cfg.backend
        tags = {TAG_JOB: job_name, **tags, **cfg.tags}
        if cfg.backend == "mlflow":
            from ray.air.integrations.mlflow import setup_mlflow

            self.client = setup_mlflow(
                config=params,
                tracking_uri=_allow_folder_store(uri),
                experiment_name=_experiment(cfg, job_name),
                run_name=job_name,
                create_experiment_if_not_exists=True,
                tags=tags,
            )
        else:
            from ray.air.integrations.wandb import setup_wandb

            self.client = setup_wandb(
                config=params, project=cfg.project, group=_experiment(cfg, job_name), name=job_name
            )

    def log(self, metrics: dict, step: int) -> None:
        nums = {
            k: float(v) for k, v in metrics.items() if k != "step" and isinstance(v, int | float)
        }
        if self.backend == "mlflow":
            self.client.log_metrics(nums, step=step)
        else:
            self.client.log(nums, step=step)

    def finish(self) -> None:
        if self.backend == "mlflow":
            self.client.end_run()
        else:
            self.client.finish()


def find_run(
    cfg: TrackingConfig | None, output_dir: str, job_name: str, match: dict[str, str]
) -> dict | None:
    """The newest MLflow run of this job whose tags match (e.g. the trial's name), as
    {backend, uri, experiment, run_id} for the registry's metadata (None: no tracking, W&B,
    or no such run)."""
    if cfg is None or cfg.backend != "mlflow":
        return None
    from mlflow.tracking import MlflowClient

    uri = _allow_folder_store(mlflow_uri(cfg, output_dir))
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(_experiment(cfg, job_name))
    if exp is None:
        return None
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {TAG_JOB: job_name, **match}.items())
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=where,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    return {"backend": "mlflow", "uri": uri, "experiment": exp.name, "run_id": runs[0].info.run_id}


def tag_run(run: dict | None, ref: str, registry: str) -> None:
    """Mark the run with the registry version it produced (`kind/name@version`)."""
    if run is None:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=_allow_folder_store(run["uri"]))
    client.set_tag(run["run_id"], TAG_VERSION, ref)
    client.set_tag(run["run_id"], TAG_REGISTRY, registry)


def flat_params(data: dict, prefix: str = "") -> dict:
    """Nested settings as MLflow params ('train.lr': 0.001); lists and None as text."""
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = v if isinstance(v, int | float | str | bool) else str(v)
    return out
