"""Distributed pretraining: Ray Train `TorchTrainer` workers running our loop under DeepSpeed.

Driver (`run_pretraining`): prepare data (tokenizer + shards), start the trainer, then export
the final checkpoint (ZeRO shards consolidated to fp32) into the model registry.

Worker (`worker_loop`): build the model from the config it is given (never from module
globals), wrap it with DeepSpeed, resume from Ray Train's latest checkpoint if there is one,
stream its shard of the examples, and every `checkpoint_every` steps: save (every rank writes
its DeepSpeed shard) -> barrier -> `ray.train.report`, which merges the ranks' folders into one
checkpoint in the run's storage.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from lmplatform import storage
from lmplatform.config import ConfigError
from lmplatform.models.families import objective_of
from lmplatform.models.objective import Objective
from lmplatform.models.tasks import build_pretraining_model
from lmplatform.pretraining.config import PretrainJobConfig
from lmplatform.pretraining.data import shard_files
from lmplatform.registry.store import Registry
from lmplatform.runtime import ray_storage
from lmplatform.train.shards import batch_starts, gathered
from lmplatform.train.worker_parts import (
    STATE,
    DataLayout,
    consolidated_state_dict,
    newest_train_state,
    resume_position,
)

EVAL_SEED = 12345


def make_eval_fn(
    rows: dict[str, list],
    objective: Objective | str,
    tokenizer_json: str,
    job: PretrainJobConfig,
    device="cpu",
):
    """Loss on fixed rows with fixed masks: comparable across steps, runs and exported copies.
    With several workers each rank scores every N-th batch and the sums are added
    (lmplatform/train/shards.py); batch k's masks are drawn from its own seed, so they do not
    depend on which rank scores it."""
    objective = objective_of(objective)
    n = len(rows["input_ids"])
    bs = job.train.batch_size

    def evaluate(model) -> dict:
        total = 0.0
        for lo in batch_starts(n, bs, lockstep=job.scaling.zero_stage == 3):
            start = lo if lo is not None else 0  # None: a forward that keeps ZeRO-3 in step
            collate = objective.collator(tokenizer_json, job.examples, EVAL_SEED + start // bs)
            batch = collate({k: v[start : start + bs] for k, v in rows.items()})
            out = model(**{k: v.to(device) for k, v in batch.items()})
            if lo is not None:
                total += float(out["loss"]) * len(batch["input_ids"])
        return {"eval_loss": sum(gathered(total)) / max(n, 1)}

    return evaluate


def eval_rows(files: list[str], n: int) -> dict[str, list]:
    """The first `n` examples of the shards, as a column dict (small: sent to every worker)."""
    from lmplatform import storage

    table = storage.read_parquet(files[:1])
    return table.slice(0, min(n, table.num_rows)).to_pydict()


def worker_loop(config: dict) -> None:
    """One Ray Train worker: build, restore, stream, train; the pieces are in
    train/worker_parts.py. `config["callbacks"]`: extra `(step, metrics)` callables run before
    each step's reporting (tests inject faults with them)."""
    import ray.train

    from lmplatform.console import quiet_ray_train_logger
    from lmplatform.train.loop import fit
    from lmplatform.train.worker_parts import DataPosition, Reporter, RunLog

    quiet_ray_train_logger()
    job = PretrainJobConfig.model_validate(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(job.train.seed)
    if not job.scaling.use_gpu:  # Ray pins OMP threads to the reserved CPUs; we may want more
        torch.set_num_threads(job.scaling.torch_threads or max(1, int(job.scaling.cpus_per_worker)))
    stepper, resume = _restored_engine(job, config, world, rank)
    # every rank draws its own masks
    collate = job.objective.collator(
        config["tokenizer_json"], job.examples, job.train.seed * 1000 + rank
    )
    data = DataPosition(
        ray.train.get_dataset_shard("train"),
        collate,
        job.train.batch_size,
        resume.batches_seen,
        rank,
    )
    run_log = RunLog(config, job, rank, resume.start_step)
    reporter = Reporter(
        stepper.engine, job.train, job.train.max_steps, world, rank, run_log, data, resume
    )
    callbacks = [*config.get("callbacks", ()), reporter]
    total = job.train.max_steps
    if resume.stopped_early and job.train.early_stopping:  # a finished run started again
        total = resume.start_step
        if rank == 0:
            print(f"[pretrain {job.name}] stopped early at step {total}: nothing to do", flush=True)
    fit(
        stepper.engine,
        data,
        job.train,
        evaluate=make_eval_fn(
            config["eval_rows"],
            job.objective,
            config["tokenizer_json"],
            job,
            stepper.engine.device,
        ),
        total_steps=total,
        stepper=stepper,
        start_step=resume.start_step,
        on_step=lambda step, metrics: [cb(step, metrics) for cb in callbacks],
        log=(lambda s: print(s, flush=True)) if rank == 0 else None,
        name=f"pretrain {job.name}",
        device=stepper.engine.device,
        watch=("eval_loss", "min"),  # train.early_stopping, when set
    )
    run_log.finish()


def _restored_engine(job: PretrainJobConfig, config: dict, world: int, rank: int):
    """The worker's DeepSpeed stepper, where the run's newest checkpoint left it (or fresh, or
    from `init_from`), and the `Resume` that says where its data continues."""
    import ray.train

    from lmplatform.train.deepspeed_engine import DeepSpeedStepper, deepspeed_config, engine_layout
    from lmplatform.train.worker_parts import Resume

    model = build_pretraining_model(
        job.model.model_copy(update={"vocab_size": config["vocab_size"]})
    )
    resume = Resume.from_checkpoint(
        ray.train.get_checkpoint(),
        DataLayout.of(job.train, world, config["data_fingerprint"]),
        job.train.resume_mismatch,
        engine=engine_layout(deepspeed_config(job.train, job.scaling, world)),
    )
    if config["init_from"] and resume.checkpoint is None:  # a resumed run has its own weights
        load_init_weights(model, config["registry"], config["init_from"])
    resume.load_resized_weights(model)
    if job.scaling.use_gpu:
        model = model.to(ray.train.torch.get_device())
    stepper = DeepSpeedStepper(model, job.train, job.scaling, world, job.train.max_steps)
    resume.restore(stepper)
    if rank == 0 and resume.checkpoint is not None:
        print(resume.describe(), flush=True)
    return stepper, resume


def load_init_weights(model: torch.nn.Module, registry: Registry, ref: str) -> None:
    """Continued pretraining: every weight from the registered model (fetched on this node)."""
    from lmplatform.models.io import load_weights

    name, version = ref.split("@")
    load_weights(model, registry.local_path("pretrained", name, version))
    print(f"[pretrain] weights from pretrained/{ref}", flush=True)


# --------------------------------------------------------------------------- driver


def data_fingerprint(prepared) -> dict:
    """The example set's identity (its inputs' key) and size: a checkpoint's data position
    holds only in the set it was counted in."""
    return {"examples_key": prepared.manifest["key"], "examples": prepared.manifest["examples"]}


def check_before_training(job: PretrainJobConfig, prepared) -> None:
    """What the workers would fail on, refused before any starts (in a worker it would be
    retried `scaling.max_failures` times and end as a traceback): a batch larger than a
    worker's share of the examples, a resume on other examples than its checkpoint's."""
    n, workers, bs = prepared.manifest["examples"], job.scaling.num_workers, job.train.batch_size
    if n // workers < bs:
        raise ConfigError(
            f"train.batch_size={bs} is more than each of scaling.num_workers={workers} workers "
            f"gets from the {n} examples ({n // workers}): set train.batch_size={max(1, n // workers)}"
            " or fewer workers, or pretrain on more text"
        )
    state = newest_train_state(storage.join(job.output_dir, "ray", job.name))
    if state is not None:
        layout = DataLayout.of(job.train, workers, data_fingerprint(prepared))
        resume_position(state, layout, job.train.resume_mismatch)  # raises on other examples


def run_pretraining(job: PretrainJobConfig, callbacks: list | None = None):
    """Prepare the data and run the `TorchTrainer`. `callbacks`: picklable `(step, metrics)`
    callables every worker runs at each step (tests inject faults with them)."""
    import ray.train
    from ray.train import FailureConfig, RunConfig

    from lmplatform.pretraining.prepare import prepare
    from lmplatform.tracking import mlflow_uri
    from lmplatform.train.trainer import torch_trainer

    if importlib.util.find_spec("deepspeed") is None:  # before any work, not in the workers
        raise ConfigError(
            "pretraining runs every step through DeepSpeed, which is not installed: "
            "pip install 'lmplatform[pretrain]'"
        )
    prepared = prepare(job)
    check_before_training(job, prepared)
    files = shard_files(prepared.examples_dir)
    # the same rows in the same order on every run: resumption and ZeRO comparisons rely on it
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    fs, _ = storage.arrow_filesystem(files[0])
    train_ds = ray.data.read_parquet([storage.arrow_filesystem(f)[1] for f in files], filesystem=fs)
    loop_config = {
        "job": job.model_dump(mode="json"),
        "tokenizer_json": prepared.tokenizer_path.read_text(),
        "run_dir": prepared.run_dir,
        "vocab_size": prepared.vocab_size,
        "init_from": prepared.init_from,
        "data_fingerprint": data_fingerprint(prepared),
        # the opened registry (its absolute URI: a relative path would resolve in the
        # worker's own directory)
        "registry": job.registry,
        "tracking_uri": (
            mlflow_uri(job.tracking, job.output_dir)
            if job.tracking and job.tracking.backend == "mlflow"
            else None
        ),
        "callbacks": list(callbacks or ()),
        "eval_rows": eval_rows(files, job.train.eval_batches * job.train.batch_size),
    }
    run_config = RunConfig(
        name=job.name,
        **ray_storage(job.output_dir, "ray"),
        checkpoint_config=_checkpoint_config(job),
        failure_config=FailureConfig(max_failures=job.scaling.max_failures),
    )
    trainer = torch_trainer(worker_loop, loop_config, job.scaling, run_config, {"train": train_ds})
    result = trainer.fit()
    return prepared, result


def _checkpoint_config(job: PretrainJobConfig):
    from ray.train import CheckpointConfig

    if not job.train.early_stopping:  # the newest are kept
        return CheckpointConfig(num_to_keep=job.train.keep_checkpoints)
    # the best by eval_loss (every checkpoint follows an evaluation); Ray keeps the newest too,
    # for resumption
    return CheckpointConfig(
        num_to_keep=job.train.keep_checkpoints,
        checkpoint_score_attribute="eval_loss",
        checkpoint_score_order="min",
    )


def registered_checkpoint(job: PretrainJobConfig, result):
    """(checkpoint, its metrics) the run registers: the final one, or with early stopping the
    one of the best evaluation."""
    if result.checkpoint is None:
        raise RuntimeError(f"pretraining run {job.name!r} produced no checkpoint: {result.error}")
    scored = [
        (c, m)
        for c, m in (result.best_checkpoints or [])
        if isinstance(m.get("eval_loss"), int | float) and math.isfinite(m["eval_loss"])
    ]
    if job.train.early_stopping and scored:  # an earlier run's checkpoint may have no score
        return min(scored, key=lambda cm: cm[1]["eval_loss"])
    return result.checkpoint, result.metrics or {}


def export_and_register(job: PretrainJobConfig, prepared, result) -> tuple[str, str, str]:
    """Consolidate the run's registered checkpoint (`registered_checkpoint`) to fp32, save it as
    a model folder and publish it."""
    checkpoint, metrics = registered_checkpoint(job, result)
    final = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    where = checkpoint.path
    if not storage.is_local(job.output_dir):  # Ray's path inside the bucket: name it fully
        where = f"{job.output_dir.split('://')[0]}://{where}"
    with checkpoint.as_directory() as d:
        return export_checkpoint(job, prepared, d, final, source=where)


def export_checkpoint(
    job: PretrainJobConfig,
    prepared,
    checkpoint: str | os.PathLike,
    metrics: dict | None = None,
    source: str | None = None,
) -> tuple[str, str, str]:
    """Export any checkpoint of a run (a local folder or a URI; ZeRO shards merged to fp32) into
    the registry. Returns (name, version, the version's location)."""
    from lmplatform import tracking

    with tempfile.TemporaryDirectory() as td:
        if not storage.is_local(checkpoint):
            checkpoint = storage.download(checkpoint, Path(td) / "checkpoint")
        model, train_state = _checkpoint_model(job, prepared, Path(checkpoint), source)
        out = Path(td) / f"export-step{train_state['step']}"
        _save_model_folder(job, prepared, model, out)
        metadata = _export_metadata(job, prepared, train_state, source or str(checkpoint), metrics)
        run = tracking.find_run(
            job.tracking, job.output_dir, job.name, {"lmplatform.run_dir": prepared.run_dir}
        )
        if run is not None:
            metadata["tracking"] = run
        reg = job.registry
        version = reg.publish("pretrained", job.name, out, metadata)
    tracking.tag_run(run, f"pretrained/{job.name}@{version}", reg.uri)
    return job.name, version, reg.location("pretrained", job.name, version)


def _checkpoint_model(job: PretrainJobConfig, prepared, d: Path, source: str | None):
    """The run's model with a checkpoint's weights (ZeRO shards merged), and its train state."""
    if not (d / STATE).is_file():
        raise FileNotFoundError(f"{source or d}: not a pretraining checkpoint (no {STATE})")
    state = consolidated_state_dict(d)
    train_state = json.loads((d / STATE).read_text())
    model = build_pretraining_model(
        job.model.model_copy(update={"vocab_size": prepared.vocab_size})
    )
    model.load_state_dict(state, strict=True)
    return model, train_state


def _save_model_folder(job: PretrainJobConfig, prepared, model: torch.nn.Module, out: Path):
    """The model folder (weights, tokenizer, resolved job config), and the run's loss curve."""
    from lmplatform.config import save_resolved
    from lmplatform.models.io import save_pretrained
    from lmplatform.plots import loss_curve, read_jsonl

    save_pretrained(model, out, tokenizer=prepared.tokenizer_path)
    save_resolved(job, out)
    history = read_jsonl(storage.join(prepared.run_dir, "metrics.jsonl"))
    loss_curve(
        history,
        storage.join(prepared.run_dir, "loss_curve.png"),
        title=f"{job.name} ({job.model.family}-{job.model.size})",
    )


def _export_metadata(
    job: PretrainJobConfig, prepared, train_state: dict, checkpoint: str, metrics: dict | None
) -> dict:
    """The registry's metadata.json: what the model is, where it came from, how it scored."""
    return {
        "kind": "pretrained",
        "family": job.model.family,
        "size": job.model.size,
        "lineage": {
            "corpus": job.corpus.source.describe(),
            "corpus_fingerprint": prepared.corpus_fingerprint,
            "tokenizer_hash": prepared.tokenizer_hash,
            "examples_key": prepared.manifest["key"],
            "init_from": prepared.init_from,
            "checkpoint": checkpoint,
            "steps": train_state["step"],
            "tokens_seen": train_state["tokens"],
            "workers": job.scaling.num_workers,
            "zero_stage": job.scaling.zero_stage,
        },
        "metrics": metrics or {},
        "config": job.model_dump(mode="json"),
    }
