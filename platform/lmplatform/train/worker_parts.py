"""The named pieces a Ray Train pretraining worker is composed of (pretrain.worker_loop):

- `DataLayout`: what a checkpoint's data position is counted in (batch size, accumulation, world
  size, the example set), saved with it and compared when a run resumes;
- `Resume`: where a (re)started worker continues: step, tokens, data position, and whether the
  world size or the engine's layout (ZeRO stage, precision mode) changed since the checkpoint
  (DeepSpeed cannot re-partition ZeRO optimizer state nor load another mode's, so the engine
  then starts from the consolidated fp32 weights instead);
- `DataPosition`: the worker's shard of the examples as batches, skipping what a resumed run
  already saw, counting what the loop takes (the next resume position);
- `RunLog`: rank 0's metrics.jsonl, TensorBoard and tracking run, in a local mirror of the run
  folder (which may be s3://…) pushed with every report;
- `Reporter`: reports to Ray Train at most every `report_every_s` (every rank makes the same
  calls: rank 0's clock decides) and at every checkpoint (every rank saves its DeepSpeed shard,
  then one report merges them).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lmplatform.config import ConfigError
from lmplatform.train.config import ResumeMismatch, TrainConfig
from lmplatform.train.deepspeed_engine import engine_layout, weights_only_loads
from lmplatform.train.loop import rank0_decides

STATE = "train_state.json"
TAG = "state"


@dataclass(frozen=True)
class DataLayout:
    """What a data position is counted in: micro-batches of `batch_size` examples per worker
    (`grad_accum_steps` to an optimizer step) over `world_size` workers, through the example
    set `data` identifies (its key and row count, from the prepared manifest)."""

    batch_size: int
    grad_accum_steps: int
    world_size: int
    data: dict

    @classmethod
    def of(cls, train: TrainConfig, world_size: int, data: dict) -> DataLayout:
        return cls(train.batch_size, train.grad_accum_steps, world_size, data)

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum_steps * self.world_size


def checkpoint_state(
    step: int, batches_seen: int, tokens: int, layout: DataLayout, stopped_early: bool = False
) -> dict:
    """`train_state.json`: where the run is, the layout its position is counted in, and
    whether early stopping ended the run here (a restart then has nothing to do)."""
    state = {"step": step, "batches_seen": batches_seen, "tokens": tokens, **asdict(layout)}
    return {**state, "stopped_early": True} if stopped_early else state


def resume_position(
    state: dict, now: DataLayout, on_new_data: ResumeMismatch = "error"
) -> tuple[int, list]:
    """Batches per worker to skip so a resumed run reads on from where the checkpoint stopped,
    under the current layout, and notes on what changed since (old -> new).

    The position is counted in examples, so a new batch size or worker count converts it and a
    new accumulation leaves it; in another example set it means nothing (see `_new_examples`).
    A checkpoint from before the layout was recorded is taken as unchanged, with a note."""
    step = state["step"]
    missing = [k for k in ("batch_size", "grad_accum_steps", "data") if k not in state]
    notes = []
    if missing:
        notes.append(
            f"the checkpoint at step {step} does not record {', '.join(missing)} (an older "
            "version wrote it): not checked, assumed unchanged"
        )
    old = DataLayout(**{k: state.get(k, v) for k, v in asdict(now).items()})
    if old.data != now.data:
        return 0, [*notes, _new_examples(step, old.data, now.data, on_new_data)]
    examples = state["batches_seen"] * old.batch_size * old.world_size  # all workers together
    skip, rest = divmod(examples, now.batch_size * now.world_size)
    changed = [
        f"{name} {a} -> {b}"
        for name, a, b in (
            ("train.batch_size", old.batch_size, now.batch_size),
            ("train.grad_accum_steps", old.grad_accum_steps, now.grad_accum_steps),
        )
        if a != b
    ]
    if changed:
        again = f", the last {rest} read again" if rest else ""
        notes.append(
            f"{', '.join(changed)} since the checkpoint at step {step}: the data position "
            f"carries over ({examples} examples seen{again}); an optimizer step now takes "
            f"{now.examples_per_step} examples, not {old.examples_per_step}"
        )
    return skip, notes


def _new_examples(step: int, old: dict, new: dict, on_new_data: ResumeMismatch) -> str:
    """A checkpoint's position in another example set: refused unless `on_new_data` is "warn",
    which keeps weights, optimizer and step and reads the new set from its start (the note)."""
    change = ", ".join(
        f"{k} {old.get(k)} -> {new.get(k)}"
        for k in sorted({*old, *new})
        if old.get(k) != new.get(k)
    )
    if on_new_data != "warn":
        raise ConfigError(
            f"the training examples changed since the checkpoint at step {step} ({change}): its "
            "data position does not apply to them. Resume on the data it was trained on, start "
            "afresh under a new `name`, or set train.resume_mismatch=warn to keep weights, "
            "optimizer and step and read the new examples from their start"
        )
    return f"the training examples changed ({change}): reading them from their start"


def saved_engine_layout(checkpoint_dir: str | os.PathLike) -> str:
    """The `engine_layout` of the DeepSpeed config a checkpoint was written with (DeepSpeed keeps
    the config in its model-states file; memory-mapped, so its weights are not read)."""
    files = sorted((Path(checkpoint_dir) / TAG).glob("*model_states.pt"))
    if not files:
        raise ValueError(f"{checkpoint_dir}: no DeepSpeed model states under {TAG}/")
    with weights_only_loads(str(checkpoint_dir)):
        states = torch.load(files[0], map_location="cpu", mmap=True)
    return engine_layout(states.get("ds_config") or {})


def newest_train_state(run_dir: str) -> dict | None:
    """The train state of a Ray Train run folder's newest checkpoint (by step): what a job
    started again under the same name resumes from. Reads no weights."""
    from lmplatform import storage

    newest = None
    for name in storage.listdir(run_dir):
        path = storage.join(run_dir, name, STATE)
        if name.startswith("checkpoint_") and storage.exists(path):
            state = storage.read_json(path)
            if newest is None or state["step"] > newest["step"]:
                newest = state
    return newest


@dataclass
class Resume:
    layout: DataLayout
    """The current run's layout: saved with each of its checkpoints."""
    start_step: int = 0
    batches_seen: int = 0
    tokens_seen: int = 0
    old_world: int = 1
    resized: bool = False
    checkpoint: object = None  # ray.train.Checkpoint
    notes: list = field(default_factory=list)
    """What changed since the checkpoint, for the log."""
    engine_change: str = ""
    """The engine layout the checkpoint was written in -> this run's, where they differ."""
    stopped_early: bool = False
    """Early stopping ended the run at this checkpoint."""

    @property
    def world(self) -> int:
        return self.layout.world_size

    @property
    def fresh_optimizer(self) -> bool:
        """The checkpoint's optimizer state cannot be loaded: weights come from its merged
        fp32 copy, AdamW starts afresh, the schedule and data position carry on."""
        return self.resized or bool(self.engine_change)

    @classmethod
    def from_checkpoint(
        cls, ckpt, layout: DataLayout, on_new_data: ResumeMismatch = "error", engine: str = ""
    ) -> Resume:
        """`engine`: this run's `engine_layout`, compared with the checkpoint's."""
        if ckpt is None:
            return cls(layout, old_world=layout.world_size)
        with ckpt.as_directory() as d:
            state = json.loads((Path(d) / STATE).read_text())
            saved = saved_engine_layout(d)
        resume = cls.from_state(state, layout, on_new_data, ckpt)
        if engine and saved != engine:
            resume.engine_change = f"{saved} -> {engine}"
        return resume

    @classmethod
    def from_state(
        cls, state: dict, layout: DataLayout, on_new_data: ResumeMismatch = "error", checkpoint=None
    ) -> Resume:
        skip, notes = resume_position(state, layout, on_new_data)
        old = state.get("world_size", layout.world_size)
        return cls(
            layout,
            start_step=state["step"],
            stopped_early=bool(state.get("stopped_early")),
            batches_seen=skip,
            tokens_seen=state["tokens"],
            old_world=old,
            resized=old != layout.world_size,
            checkpoint=checkpoint,
            notes=notes,
        )

    def load_resized_weights(self, model: torch.nn.Module) -> None:
        """After a resize or a layout change, the weights come from the consolidated checkpoint
        (before the engine exists, which then starts fresh optimizer state)."""
        if self.fresh_optimizer:
            with self.checkpoint.as_directory() as d:
                model.load_state_dict(consolidated_state_dict(d), strict=True)

    def restore(self, stepper) -> None:
        """Engine state (weights, optimizer, schedule) from the checkpoint; after a resize only
        the schedule, which continues where it was."""
        if self.checkpoint is not None and not self.fresh_optimizer:
            with self.checkpoint.as_directory() as d, weights_only_loads(str(d)):
                stepper.engine.load_checkpoint(d, tag=TAG)
        elif self.fresh_optimizer:
            with warnings.catch_warnings():  # stepped on purpose before any optimizer step
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                for _ in range(self.start_step):
                    stepper.scheduler.step()

    def describe(self) -> str:
        changes = [f"resized {self.old_world} -> {self.world} workers"] if self.resized else []
        if self.engine_change:
            changes.append(f"DeepSpeed layout {self.engine_change}")
        how = (
            f"{'; '.join(changes)}: weights, step and data position kept, AdamW moments restarted"
            if changes
            else f"{self.batches_seen} batches per worker seen"
        )
        lines = [f"[pretrain] resumed from checkpoint at step {self.start_step} ({how})"]
        return "\n".join(lines + [f"[pretrain] warning: {n}" for n in self.notes])


class DataPosition:
    """Batches of this worker's shard, from the resume position, epoch after epoch."""

    def __init__(self, shard, collate, batch_size: int, skip: int, rank: int):
        self.shard, self.collate, self.batch_size = shard, collate, batch_size
        self.skip, self.rank = skip, rank
        self.seen = skip  # batches the loop has taken: the position a checkpoint records

    def _produce(self):
        skip = self.skip
        while True:  # epochs
            n = 0
            for raw in self.shard.iter_batches(
                batch_size=self.batch_size, batch_format="numpy", drop_last=True
            ):
                n += 1
                if skip:  # resume at the same position of the epoch's stream
                    skip -= 1
                    continue
                yield self.collate(raw)
            if n == 0:
                raise RuntimeError(
                    f"worker {self.rank} got no full batch of {self.batch_size} examples: "
                    "lower train.batch_size"
                )

    def __iter__(self):
        # assembled in a background thread that also starts each next epoch's stream early
        for batch in Prefetcher(self._produce(), depth=4):
            self.seen += 1  # counted when the loop takes it
            yield batch


class RunLog:
    """Rank 0's record of the run; on other ranks every method does nothing."""

    def __init__(self, config: dict, job, rank: int, start_step: int):
        self.mirror = self.writer = self.tracker = None
        if rank != 0:
            return
        from tensorboardX import SummaryWriter

        from lmplatform import storage

        # a resumed run, on any node, appends to the metrics it had
        self.mirror = storage.Mirror(config["run_dir"], pull=("metrics.jsonl",), every_s=30)
        self.writer = SummaryWriter(str(self.mirror.local / "tensorboard"))
        if job.tracking is not None:
            from lmplatform.tracking import WorkerRun, flat_params

            self.tracker = WorkerRun(
                job.tracking,
                config["tracking_uri"],
                job.name,
                flat_params(job.model_dump(mode="json")),
                {"lmplatform.run_dir": config["run_dir"], "resumed_from_step": str(start_step)},
            )

    def record(self, step: int, metrics: dict) -> None:
        if self.writer is None:
            return
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        for k, v in scalars.items():
            if k != "step":
                self.writer.add_scalar(f"train/{k}", v, step)
        if self.tracker is not None:
            self.tracker.log(metrics, step)
        with open(self.mirror.local / "metrics.jsonl", "a") as f:
            f.write(json.dumps(scalars) + "\n")

    def push(self, force: bool) -> None:
        if self.mirror is not None:
            self.writer.flush()
            self.mirror.push(force=force)  # with every checkpoint, else at most every 30 s

    def finish(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()


class Reporter:
    """`on_step` of the loop: log lines to the run log, metric reports to Ray Train (throttled),
    checkpoints every `checkpoint_every` steps and at the end.

    It reads metrics only at the steps where the loop has read them back from the device
    (first, log, evaluation, checkpoint, last: `loop._Readback`); at other steps they may
    still be device tensors, which `float()` here would wait for."""

    def __init__(self, engine, train, total: int, world: int, rank: int, log: RunLog, data, resume):
        self.engine, self.train, self.total = engine, train, total
        self.world, self.rank, self.log, self.data, self.resume = world, rank, log, data, resume
        self.t0 = self.last_report = time.time()

    def __call__(self, step: int, metrics: dict) -> None:
        metrics["workers"] = self.world
        last = step == self.total or bool(metrics.get("early_stop"))
        # per log line (and the first step after a (re)start, to show where it resumed), not per
        # step: per-step writes cost the loop ~5 % of its throughput
        if (
            step % self.train.log_every == 0
            or last
            or step == self.resume.start_step + 1
            or any(k.startswith("eval_") for k in metrics)
        ):
            self.log.record(step, metrics)
        checkpointing = step % self.train.checkpoint_every == 0 or last
        if not checkpointing and (step % self.train.log_every or not self._due()):
            return
        self.last_report = time.time()
        self.log.push(force=checkpointing)
        report = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        report["elapsed_s"] = time.time() - self.t0
        if checkpointing:
            self._checkpoint(step, metrics, report, last)
        else:
            import ray.train

            ray.train.report(report)

    def _due(self) -> bool:
        """Ray Train V2 holds one unread report per worker and reads them every 2 s: reporting
        faster blocks the loop. Every rank must make the same report calls, so rank 0's clock
        decides for all (one tiny broadcast per log line)."""
        due = time.time() - self.last_report >= self.train.report_every_s
        return rank0_decides(due, self.engine.device)

    def _checkpoint(self, step: int, metrics: dict, report: dict, last: bool) -> None:
        import ray.train
        import torch.distributed as dist

        with tempfile.TemporaryDirectory() as d:
            self.engine.save_checkpoint(d, tag=TAG)  # every rank writes its own shard
            if self.rank == 0:
                tokens = self.resume.tokens_seen + int(metrics.get("tokens", 0))
                stopped = bool(metrics.get("early_stop"))
                state = checkpoint_state(step, self.data.seen, tokens, self.resume.layout, stopped)
                (Path(d) / STATE).write_text(json.dumps(state))
            dist.barrier()
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(d))
        if not last:
            # The controller keeps a checkpoint only once it has read its report (it reads every
            # 2 s); a worker dying before that would lose it. A second report waits until the
            # first is read, so a crash can cost at most one interval.
            ray.train.report(report)


def consolidated_state_dict(checkpoint_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """fp32 weights from a DeepSpeed checkpoint of any ZeRO stage (shards merged)."""
    d = Path(checkpoint_dir)
    if list((d / TAG).glob("*optim_states.pt")) and any(
        "zero" in p.name for p in (d / TAG).iterdir()
    ):
        from lmplatform.console import library_output
        from lmplatform.train.deepspeed_engine import name_the_accelerator

        name_the_accelerator()  # before DeepSpeed is imported: it looks for one then
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with weights_only_loads(str(d)), library_output("merging ZeRO shards"):
            return get_fp32_state_dict_from_zero_checkpoint(str(d), tag=TAG)
    with weights_only_loads(str(d)):
        states = torch.load(d / TAG / "mp_rank_00_model_states.pt", map_location="cpu")
    return {k: v.float() for k, v in states["module"].items()}


class Prefetcher:
    """Runs an iterator in a background thread, `depth` items ahead of the consumer.

    Why: the training thread should never wait for batch assembly (masking, padding) or for
    Ray Data starting the next epoch's stream (~3 s on a laptop). Errors raised by the
    producer surface in the consumer at the item where they happened.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 4):
        import queue
        import threading

        self._q: queue.Queue = queue.Queue(maxsize=depth)

        def run():  # a daemon thread: it ends with the worker process
            try:
                for item in iterable:
                    self._q.put(item)
                self._q.put(self._END)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                self._q.put(e)

        self._thread = threading.Thread(target=run, name="batch-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item
