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
import os
import tempfile
import time
from pathlib import Path

import torch

from lmplatform import storage
from lmplatform.config import ConfigError
from lmplatform.data.pretraining import BertCollator, Prefetcher, causal_collate, shard_files
from lmplatform.jobconfig import PretrainJobConfig
from lmplatform.models.tasks import build_pretraining_model
from lmplatform.runtime import ray_storage

STATE = "train_state.json"
TAG = "state"


def _collator(objective: str, tokenizer_json: str, job: PretrainJobConfig, rank: int):
    if objective != "bert":
        return causal_collate
    from tokenizers import Tokenizer

    from lmplatform.tokenization import continuation_mask, special_tokens

    tok = Tokenizer.from_str(tokenizer_json)
    sp = special_tokens(tok)
    return BertCollator(
        pad_id=sp.pad,
        mask_id=sp.mask,
        special_ids=sp.all,
        vocab_size=tok.get_vocab_size(),
        mlm_probability=job.examples.mlm_probability,
        continuation=continuation_mask(tok) if job.examples.whole_word_masking else None,
        seed=job.train.seed * 1000 + rank,  # every rank draws its own masks
    )


def make_eval_fn(
    rows: dict[str, list], objective: str, tokenizer_json: str, job: PretrainJobConfig, device="cpu"
):
    """Loss on fixed rows with fixed masks: comparable across steps, runs and exported copies."""

    collate = _collator(objective, tokenizer_json, job, rank=0)

    def evaluate(model) -> dict:
        if isinstance(collate, BertCollator):
            collate.generator.manual_seed(12345)  # the same masks every time
        n = len(rows["input_ids"])
        bs = job.train.batch_size
        total, count = 0.0, 0
        for i in range(0, n, bs):
            batch = collate({k: v[i : i + bs] for k, v in rows.items()})
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            total += float(out["loss"]) * len(batch["input_ids"])
            count += len(batch["input_ids"])
        return {"eval_loss": total / max(count, 1)}

    return evaluate


def eval_rows(files: list[str], n: int) -> dict[str, list]:
    """The first `n` examples of the shards, as a column dict (small: sent to every worker)."""
    from lmplatform.data.pretraining import read_shards

    table = read_shards(files[:1])
    return table.slice(0, min(n, table.num_rows)).to_pydict()


def worker_loop(config: dict) -> None:
    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint

    from lmplatform.train.deepspeed_engine import DeepSpeedStepper
    from lmplatform.train.loop import fit

    job = PretrainJobConfig.model_validate(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(job.train.seed)
    if not job.scaling.use_gpu:  # Ray pins OMP threads to the reserved CPUs; we may want more
        torch.set_num_threads(job.scaling.torch_threads or max(1, int(job.scaling.cpus_per_worker)))
    model_cfg = job.model.model_copy(update={"vocab_size": config["vocab_size"]})
    model = build_pretraining_model(model_cfg)
    ckpt = ray.train.get_checkpoint()
    if config["init_from"] and not ckpt:  # a resumed run has its own weights
        load_init_weights(model, config["registry"], config["init_from"])
        if rank == 0:
            print(f"[pretrain] weights from pretrained/{config['init_from']}", flush=True)
    if job.scaling.use_gpu:
        model = model.to(ray.train.torch.get_device())
    total = job.train.max_steps

    start_step, batches_seen, tokens_seen = 0, 0, 0
    resized = False
    if ckpt:
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / STATE).read_text())
            old_world = state.get("world_size", world)
            resized = old_world != world
            if resized:
                # elastic resize: DeepSpeed cannot re-partition ZeRO optimizer state for a new
                # world size, so start the engine from the consolidated fp32 weights instead
                model.load_state_dict(consolidated_state_dict(d), strict=True)
        start_step, tokens_seen = state["step"], state["tokens"]
        # the data position is global: the same number of examples, split over the new world
        batches_seen = state["batches_seen"] * old_world // world
    stepper = DeepSpeedStepper(model, job.train, job.scaling, world, total)
    engine = stepper.engine
    if ckpt and not resized:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(d, tag=TAG)
    elif resized:
        for _ in range(start_step):  # the schedule continues where it was
            stepper.scheduler.step()
    if ckpt and rank == 0:
        how = (
            f"resized {old_world} -> {world} workers: weights, step and data position kept, AdamW moments restarted"
            if resized
            else f"{batches_seen} batches per worker seen"
        )
        print(f"[pretrain] resumed from checkpoint at step {start_step} ({how})", flush=True)

    collate = _collator(config["objective"], config["tokenizer_json"], job, rank)
    shard = ray.train.get_dataset_shard("train")
    counter = {"batches": batches_seen}

    def produce():
        skip = batches_seen
        while True:  # epochs
            n = 0
            for raw in shard.iter_batches(
                batch_size=job.train.batch_size, batch_format="numpy", drop_last=True
            ):
                n += 1
                if skip:  # resume at the same position of the epoch's stream
                    skip -= 1
                    continue
                yield collate(raw)
            if n == 0:
                raise RuntimeError(
                    f"worker {rank} got no full batch of {job.train.batch_size} examples: lower train.batch_size"
                )

    def batches():
        # assembled in a background thread that also starts each next epoch's stream early
        for batch in Prefetcher(produce(), depth=4):
            counter["batches"] += 1  # counted when the loop takes it: the resume position
            yield batch

    # rank 0 logs into a local mirror of the run folder (which may be s3://…), pushed with every
    # report; a resumed run, on any node, appends to the metrics it had
    mirror = (
        storage.Mirror(config["run_dir"], pull=("metrics.jsonl",), every_s=30)
        if rank == 0
        else None
    )
    writer, tracker = None, None
    if mirror is not None:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(mirror.local / "tensorboard"))
        if job.tracking is not None:
            from lmplatform.tracking import WorkerRun, flat_params

            tracker = WorkerRun(
                job.tracking,
                config["tracking_uri"],
                job.name,
                flat_params(job.model_dump(mode="json")),
                {"lmplatform.run_dir": config["run_dir"], "resumed_from_step": str(start_step)},
            )
    fail_at = config.get("fail_at_step")  # fault-injection for tests: SIGKILL once at this step
    t0 = time.time()
    last_report = [t0]

    def on_step(step: int, metrics: dict) -> None:
        if fail_at and step == fail_at:
            try:  # O_EXCL: exactly one worker, exactly once, across restarts
                os.close(os.open(config["fail_marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os.kill(os.getpid(), 9)
            except FileExistsError:
                pass
        last = step == total
        # written per log line (and the first step after a (re)start, to show where it
        # resumed), not per step: per-step writes cost this loop ~5 % of its throughput
        logged = (
            step % job.train.log_every == 0
            or last
            or step == start_step + 1
            or any(k.startswith("eval_") for k in metrics)
        )
        metrics["workers"] = world
        if writer is not None and logged:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(f"train/{k}", v, step)
            if tracker is not None:
                tracker.log(metrics, step)
            with open(mirror.local / "metrics.jsonl", "a") as f:
                f.write(
                    json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
                    + "\n"
                )
        checkpointing = step % job.train.checkpoint_every == 0 or last
        if not checkpointing:
            if step % job.train.log_every:
                return
            # Ray Train V2 holds one unread report per worker and its controller reads them
            # every 2 s: reporting faster blocks this thread. Every rank must make the same
            # report calls, so rank 0's clock decides for all (one tiny broadcast per log line).
            due = torch.tensor(
                [int(time.time() - last_report[0] >= job.train.report_every_s)],
                device=engine.device,  # NCCL broadcasts only CUDA tensors
            )
            if world > 1:
                dist.broadcast(due, src=0)
            if not due.item():
                return
        last_report[0] = time.time()
        if mirror is not None:
            writer.flush()
            mirror.push(force=checkpointing)  # with every checkpoint, else at most every 30 s
        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        report.update(elapsed_s=time.time() - t0)
        if checkpointing:
            with tempfile.TemporaryDirectory() as d:
                engine.save_checkpoint(d, tag=TAG)  # every rank writes its own shard
                if rank == 0:
                    state = {
                        "step": step,
                        "world_size": world,
                        "batches_seen": counter["batches"],
                        "tokens": tokens_seen + int(metrics.get("tokens", 0)),
                    }
                    (Path(d) / STATE).write_text(json.dumps(state))
                dist.barrier()
                ray.train.report(report, checkpoint=Checkpoint.from_directory(d))
            if not last:
                # The controller keeps a checkpoint only once it has read its report (it reads
                # every 2 s); a worker dying before that would lose it. A second report waits
                # until the first is read, so a crash can cost at most one interval.
                ray.train.report(report)
        else:
            ray.train.report(report)

    evaluate = make_eval_fn(
        config["eval_rows"], config["objective"], config["tokenizer_json"], job, engine.device
    )
    fit(
        engine,
        batches(),
        job.train,
        evaluate=evaluate,
        total_steps=total,
        stepper=stepper,
        start_step=start_step,
        on_step=on_step,
        log=(lambda s: print(s, flush=True)) if rank == 0 else None,
        name=f"pretrain {job.name}",
        device=engine.device,
    )
    if tracker is not None:
        tracker.finish()


def load_init_weights(model: torch.nn.Module, registry: str, ref: str) -> None:
    """Continued pretraining: every weight from the registered model (fetched on this node)."""
    from lmplatform.models.io import load_weights
    from lmplatform.registry import Registry

    name, version = ref.split("@")
    load_weights(model, Registry(registry).local_path("pretrained", name, version))


# --------------------------------------------------------------------------- driver


def consolidated_state_dict(checkpoint_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fp32 weights from a DeepSpeed checkpoint of any ZeRO stage (shards merged)."""
    d = Path(checkpoint_dir)
    if list((d / TAG).glob("*optim_states.pt")) and any(
        "zero" in p.name for p in (d / TAG).iterdir()
    ):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(d), tag=TAG)
    states = torch.load(
        d / TAG / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
    )
    return {k: v.float() for k, v in states["module"].items()}


def run_pretraining(
    job: PretrainJobConfig, fail_at_step: int | None = None, fail_marker: str | None = None
):
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from lmplatform.prepare import prepare
    from lmplatform.tracking import mlflow_uri

    if importlib.util.find_spec("deepspeed") is None:  # before any work, not in the workers
        raise ConfigError(
            "pretraining runs every step through DeepSpeed, which is not installed: "
            "pip install 'lmplatform[pretrain]'"
        )
    prepared = prepare(job)
    files = shard_files(prepared.examples_dir)
    # the same rows in the same order on every run: resumption and ZeRO comparisons rely on it
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    fs, _ = storage.arrow_filesystem(files[0])
    train_ds = ray.data.read_parquet([storage.arrow_filesystem(f)[1] for f in files], filesystem=fs)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "job": job.model_dump(mode="json"),
            "tokenizer_json": prepared.tokenizer_path.read_text(),
            "run_dir": prepared.run_dir,
            "vocab_size": prepared.vocab_size,
            "init_from": prepared.init_from,
            # absolute: a relative registry path would resolve in the worker's own directory
            "registry": storage.normalize(job.registry),
            "tracking_uri": (
                mlflow_uri(job.tracking, job.output_dir)
                if job.tracking and job.tracking.backend == "mlflow"
                else None
            ),
            "objective": job.objective,
            "fail_at_step": fail_at_step,
            "fail_marker": fail_marker,
            "eval_rows": eval_rows(files, job.train.eval_batches * job.train.batch_size),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=(
                (job.scaling.min_workers, job.scaling.num_workers)
                if job.scaling.min_workers
                else job.scaling.num_workers
            ),
            elastic_resize_monitor_interval_s=job.scaling.resize_check_s,
            use_gpu=job.scaling.use_gpu,
            resources_per_worker={
                **job.scaling.resources_per_worker,
                "CPU": job.scaling.cpus_per_worker,
            },
        ),
        run_config=RunConfig(
            name=job.name,
            **ray_storage(job.output_dir, "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=job.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=job.scaling.max_failures),
        ),
        datasets={"train": train_ds},
        torch_config=TorchConfig(backend="nccl" if job.scaling.use_gpu else "gloo"),
    )
    result = trainer.fit()
    return prepared, result


def export_and_register(job: PretrainJobConfig, prepared, result) -> tuple[str, str, str]:
    """Consolidate the run's final checkpoint to fp32, save it as a model folder and publish it."""
    if result.checkpoint is None:
        raise RuntimeError(f"pretraining run {job.name!r} produced no checkpoint: {result.error}")
    final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    where = result.checkpoint.path
    if not storage.is_local(job.output_dir):  # Ray's path inside the bucket: name it fully
        where = f"{job.output_dir.split('://')[0]}://{where}"
    with result.checkpoint.as_directory() as d:
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
    from lmplatform.config import save_resolved
    from lmplatform.models.io import save_pretrained
    from lmplatform.plots import loss_curve, read_jsonl
    from lmplatform.registry import Registry

    with tempfile.TemporaryDirectory() as td:
        if not storage.is_local(checkpoint):
            checkpoint = storage.download(checkpoint, Path(td) / "checkpoint")
        d = Path(checkpoint)
        if not (d / STATE).is_file():
            raise FileNotFoundError(f"{source or d}: not a pretraining checkpoint (no {STATE})")
        state = consolidated_state_dict(d)
        train_state = json.loads((d / STATE).read_text())
        model = build_pretraining_model(
            job.model.model_copy(update={"vocab_size": prepared.vocab_size})
        )
        model.load_state_dict(state, strict=True)
        out = Path(td) / f"export-step{train_state['step']}"
        save_pretrained(model, out, tokenizer=prepared.tokenizer_path)
        save_resolved(job, out)
        history = read_jsonl(storage.join(prepared.run_dir, "metrics.jsonl"))
        loss_curve(
            history,
            storage.join(prepared.run_dir, "loss_curve.png"),
            title=f"{job.name} ({job.model.family}-{job.model.size})",
        )
        metadata = {
            "kind": "pretrained",
            "family": job.model.family,
            "size": job.model.size,
            "lineage": {
                "corpus": job.corpus.source.describe(),
                "corpus_fingerprint": prepared.corpus_fingerprint,
                "tokenizer_hash": prepared.tokenizer_hash,
                "examples_key": prepared.manifest["key"],
                "init_from": prepared.init_from,
                "checkpoint": source or str(checkpoint),
                "steps": train_state["step"],
                "tokens_seen": train_state["tokens"],
                "workers": job.scaling.num_workers,
                "zero_stage": job.scaling.zero_stage,
            },
            "metrics": metrics or {},
            "config": job.model_dump(mode="json"),
        }
        run = tracking.find_run(
            job.tracking, job.output_dir, job.name, {"lmplatform.run_dir": prepared.run_dir}
        )
        if run is not None:
            metadata["tracking"] = run
        reg = Registry(job.registry)
        version = reg.publish("pretrained", job.name, out, metadata)
    tracking.tag_run(run, f"pretrained/{job.name}@{version}", reg.uri)
    return job.name, version, reg.location("pretrained", job.name, version)
