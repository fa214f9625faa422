"""One trial: build the task model, train it with the shared loop, evaluate and report.

- Single-worker trials are function trainables that report a real Tune checkpoint (weights,
  optimizer, step) at every evaluation, so ASHA can stop them and PBT can copy one trial's
  checkpoint into another and continue from it with mutated hyperparameters.
- Multi-worker trials (`scaling.num_workers > 1`) and DeepSpeed trials (`scaling.zero_stage`
  1-3, any number of workers: ZeRO needs a process group) follow Ray Train V2's pattern: the
  trial is a driver function that runs a `TorchTrainer` (DDP or a DeepSpeed engine, built like
  pretraining's) and forwards its reports to Tune with `TuneReportCallback`. A DeepSpeed trial's
  checkpoint is every rank's ZeRO shard. Ray's bridge does not support PBT.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmplatform.metrics import add_counts
from lmplatform.models.tasks import TaskModel, build_encoder
from lmplatform.tasks import task_type
from lmplatform.tasks.base import class_f1
from lmplatform.tasks.encoding import TaskEncoder
from lmplatform.train.loop import to_device
from lmplatform.train.shards import batch_starts, gathered
from lmplatform.train.worker_parts import TAG
from lmplatform.tune.config import FinetuneJobConfig, TrialParams
from lmplatform.tune.data import TaskData, eval_subset

CKPT = "trial.pt"


def load_trial_state(folder: str | Path) -> dict:
    """A trial checkpoint's `trial.pt`: tensors and plain values only (`weights_only`), so a
    file planted in the run storage cannot run code on the driver or the workers."""
    path = Path(folder) / CKPT
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is advice on loading it anyway; keep only what it found
        found = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln]
        what = f" ({found[0].split(' was not')[0]})" if found else ""
        raise ValueError(
            f"{path}: refused, it holds more than tensors and plain values{what}"
        ) from None


# What checkpoints are kept and the best one chosen by: the task metric, ties broken by dev loss.
# An easy dev set saturates the metric (macro F1 1.0 after a few hundred steps in several
# trials); without the tie-break the first checkpoint to reach it won, often the least trained
# and least confident one (it got 3 of 4 hand-written business headlines wrong in one CI run).
SELECTION = "selection_score"
_LOSS_WEIGHT = 1e-9  # far below any metric difference: only decides ties


def selection_score(metric_value: float, dev_loss: float) -> float:
    return metric_value - _LOSS_WEIGHT * dev_loss


def build_model(data: TaskData, hp: TrialParams) -> nn.Module:
    """The trial's model: the parent's weights (or random ones) with the task's head, and LoRA
    adapters when `hp.lora_rank` is set."""
    model = _base_model(data, hp)
    if hp.lora_rank is not None:
        add_adapters(model, lora_spec(data, hp))
    return model


def lora_spec(data: TaskData, hp: TrialParams):
    """The trial's adapters: rank, alpha and targets as drawn, dropout as configured."""
    from lmplatform.models.lora import LoraSpec

    dropout = data.cfg.train.adapters.dropout
    return LoraSpec(hp.lora_rank, hp.lora_alpha, dropout, tuple(hp.lora_targets))


def add_adapters(model: nn.Module, spec) -> None:
    """LoRA on the encoder (the whole encoder-decoder for seq2seq); then only the adapters
    train, and a task model's head (`TaskModel.in_head`: with ELECTRA's pooler)."""
    from lmplatform.models.lora import add_lora

    add_lora(model.encoder if isinstance(model, TaskModel) else model, spec)
    for name, p in model.named_parameters():
        head = isinstance(model, TaskModel) and model.in_head(name)
        p.requires_grad_(head or name.endswith(("lora_a", "lora_b")))


def _base_model(data: TaskData, hp: TrialParams) -> nn.Module:
    from lmplatform.models.io import model_config, task_model_from_pretrained

    t = data.cfg.task
    if task_type(t.type).whole_model:  # the encoder-decoder itself: from scratch or warm
        from lmplatform.models.families import family

        cfg = model_config({"model": data.model_config}).model_copy(
            update={"dropout": hp.dropout, "label_smoothing": hp.label_smoothing}
        )
        model = family(cfg).pretraining(cfg)
        if data.parent_ref != "scratch":
            _warm_start(model, data)
        return model
    n = len(data.label_names)
    frozen = hp.transfer == "frozen"
    layout = task_type(t.type).layout
    if not data.parent_ref.startswith("random:"):
        name, version = data.parent_ref.split("@")
        path = data.registry.local_path("pretrained", name, version)  # on this node
        return task_model_from_pretrained(
            path, t.type, n, frozen=frozen, dropout=hp.dropout, layout=layout
        )
    encoder = build_encoder(model_config({"model": data.model_config}))
    return TaskModel(encoder, t.type, n, dropout=hp.dropout, frozen=frozen, layout=layout)


def _warm_start(model: nn.Module, data: TaskData) -> None:
    from lmplatform.models.io import from_pretrained
    from lmplatform.models.tasks import encoder_of
    from lmplatform.models.warm_start import warm_start

    name, version = data.parent_ref.split("@")
    path = data.registry.local_path("pretrained", name, version)  # on this node
    warm_start(model, encoder_of(from_pretrained(path)), data.cfg.warm_start)


def lr_scale_fn(model: nn.Module, layer_decay: float):
    """Layer-wise LR decay: the top (the head) at the full rate, each layer below it
    `layer_decay` times the one above (the model says how deep each parameter sits)."""
    if layer_decay == 1.0:
        return lambda name: 1.0
    top = max(model.layer_depth(n) for n, _ in model.named_parameters())  # the head: L + 1
    return lambda name: layer_decay ** (top - model.layer_depth(name))


def total_steps(job: FinetuneJobConfig, epochs: float | None, per_epoch: int) -> int:
    return max(1, round(per_epoch * epochs)) if epochs else job.train.max_steps


def steps_per_epoch(n_rows: int, batch_size: int, world: int) -> int:
    return max(1, n_rows // (batch_size * world))


def _row_length(row: dict) -> int:
    """Characters in a row's texts: a cheap stand-in for its token count."""
    n = 0
    for v in row.values():
        if isinstance(v, str):
            n += len(v)
        elif isinstance(v, list) and v and isinstance(v[0], str):
            n += sum(map(len, v))
    return n


def _grouped(order: np.ndarray, lengths: np.ndarray, block: int, rng) -> np.ndarray:
    """`order` with rows of similar length in the same batch (`block` rows): sorted within
    windows of 50 batches, then the batches shuffled so lengths do not rise through an epoch."""
    window = block * 50
    parts = [
        w[np.argsort(lengths[w], kind="stable")]
        for w in np.split(order, range(window, len(order), window))
    ]
    flat = np.concatenate(parts)
    n = len(flat) // block * block
    batches = flat[:n].reshape(-1, block)
    return np.concatenate([batches[rng.permutation(len(batches))].reshape(-1), flat[n:]])


def _batches(
    rows: list[dict],
    encoder: TaskEncoder,
    bs: int,
    seed: int,
    start: int,
    rank=0,
    world=1,
    group_by_length: bool = False,
):
    """Batches from global step `start` on: a fixed permutation per epoch, so a restored
    trial (PBT, failure) sees the same stream from where its checkpoint left off."""
    per = steps_per_epoch(len(rows), bs, world)
    lengths = np.array([_row_length(r) for r in rows]) if group_by_length else None
    step = start
    while True:
        epoch, k = divmod(step, per)
        rng = np.random.default_rng(seed + epoch)
        order = rng.permutation(len(rows))
        if lengths is not None:
            order = _grouped(order, lengths, bs * world, rng)
        lo = (k * world + rank) * bs
        yield encoder.collate([rows[i] for i in order[lo : lo + bs]])
        step += 1


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TaskData,
    rows: list[dict],
    encoder: TaskEncoder,
    bs: int = 64,
    detail: bool = False,
    zero_stage: int = 0,
) -> dict:
    """Dev metrics of `model` on `rows`: the task's metrics, dev_loss, and F1 per class (per
    entity type for NER) as flat `f1/<label>` values that Tune records for every evaluation.
    `detail`: also precision, recall, F1 and support per class under `per_class`.

    Under a process group every rank scores its share of the batches and the ranks' counts are
    added (lmplatform/train/shards.py): the metrics are those of one rank scoring every row.
    `zero_stage`: the model's ZeRO stage (stage 3 needs every rank to run as many forwards)."""
    was_training = model.training
    model.eval()
    task = data.cfg.task
    ttype = task_type(task.type)
    scorer = ttype.scorer(
        data.label_names, data.classes, model=model, encoder=encoder, task=task, final=detail
    )
    # under ZeRO-3 each decoding step is a forward that gathers parameters from every rank,
    # and decoding lengths differ between shards: there every rank decodes every row (the
    # same rows with the same weights: the same lengths, as before sharding existed)
    alike = zero_stage == 3 and ttype.generates
    starts = (
        list(range(0, len(rows), bs)) if alike else batch_starts(len(rows), bs, zero_stage == 3)
    )
    loss_sum = _score_batches(model, scorer, encoder, rows, starts, bs)
    model.train(was_training)
    parts = [(scorer.counts(), loss_sum)] if alike else gathered((scorer.counts(), loss_sum))
    metrics, per = scorer.result_of(add_counts(c for c, _ in parts))
    metrics["dev_loss"] = sum(loss for _, loss in parts) / max(len(rows), 1)
    # this process's share of the rows (all of them in one process): what sharding saved
    metrics["dev_rows_scored"] = sum(len(rows[lo : lo + bs]) for lo in starts if lo is not None)
    metrics.update(class_f1(per))
    if detail:
        metrics["per_class"] = per
    return metrics


def _score_batches(model, scorer, encoder, rows, starts, bs: int) -> float:
    """Adds the batches at `starts` to `scorer` (None: a forward pass thrown away, to keep
    ZeRO-3 ranks in step); returns their summed loss (mean per batch x rows)."""
    device = next(model.parameters()).device
    loss_sum = 0.0
    for lo in starts:
        chunk = rows[lo : lo + bs] if lo is not None else rows[:bs]
        batch = to_device(encoder.collate(chunk), device)
        out = model(**batch)
        if lo is not None:
            loss_sum += float(out["loss"]) * len(chunk)
            scorer.add(out["logits"].float(), batch, chunk)
    return loss_sum


def trial_train_config(job: FinetuneJobConfig, hp: TrialParams, total: int):
    """The loop's config for one trial: the job's, with the trial's values of its fields and
    `epochs` turned into `max_steps` (`total`)."""
    update = {k: v for k, v in hp if k in job.train.model_fields and k != "epochs"}
    update.update(max_steps=total, eval_every=min(job.train.eval_every, total))
    return job.train.model_copy(update=update)


def restore(checkpoint, model, stepper, cfg, hp: TrialParams, total: int) -> tuple[int, str | None]:
    """Weights, optimizer and schedule from a trial checkpoint (a failure's own, or PBT's
    donor's); returns (step to continue after, the donor trial)."""
    from lmplatform.train.loop import lr_lambda

    with checkpoint.as_directory() as d:
        state = load_trial_state(d)
        if "rng" in state:  # the dropout stream where it stopped (every rank draws the same)
            torch.set_rng_state(state["rng"])
        if "model" not in state:  # DeepSpeed: every rank loads its shard
            from lmplatform.train.deepspeed_engine import weights_only_loads

            with weights_only_loads(str(d)):
                stepper.engine.load_checkpoint(d, tag=TAG)
            return state["step"], state.get("trial")
    model.load_state_dict(state["model"])
    stepper.optimizer.load_state_dict(state["optimizer"])
    start = state["step"]
    # PBT may have mutated lr / weight decay: the copied optimizer state keeps the old ones
    for g in stepper.optimizer.param_groups:
        g["initial_lr"] = hp.lr * g.get("lr_scale", 1.0)
        if g["weight_decay"] > 0:
            g["weight_decay"] = hp.weight_decay
    schedule = lr_lambda(cfg, total)
    stepper.scheduler = torch.optim.lr_scheduler.LambdaLR(
        stepper.optimizer, schedule, last_epoch=start - 1
    )
    # LambdaLR(last_epoch=k) does not set the lr for step k: do it
    for g, base in zip(stepper.optimizer.param_groups, stepper.scheduler.base_lrs):
        g["lr"] = base * schedule(start)
    return start, state.get("trial")


class TrialReporter:
    """`on_eval` of a trial: the metrics Tune sees, with a checkpoint from rank 0."""

    def __init__(
        self, model, stepper, hp, metric, per_epoch, start, restored, report, make_ckpt, rank
    ):
        self.model, self.stepper, self.hp, self.metric = model, stepper, hp, metric
        self.engine = getattr(stepper, "engine", None)  # DeepSpeed
        self.per_epoch, self.start, self.restored = per_epoch, start, restored
        self.report, self.make_ckpt, self.rank = report, make_ckpt, rank
        self.name, self.t0 = _trial_name(), time.time()

    def __call__(self, step: int, ev: dict) -> None:
        metrics = {
            self.metric: ev[self.metric],
            "dev_loss": ev["dev_loss"],
            "dev_rows_scored": ev["dev_rows_scored"],
            SELECTION: selection_score(ev[self.metric], ev["dev_loss"]),
            "step": step,
            "epoch": step / self.per_epoch,
            "lr": self.stepper.lr,
            "trial_seconds": time.time() - self.t0,
            "restored_from_step": self.start if self.restored is not None else -1,
            **{k: v for k, v in ev.items() if k.startswith("f1/")},
        }
        if self.engine is not None:
            self._deepspeed_checkpoint(step, metrics)
            return
        if self.rank != 0:
            self.report(metrics)
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.stepper.optimizer.state_dict(),
            "step": step,
            "trial": self.name,
            "hp": self.hp.model_dump(),  # plain values: checkpoints load without pickle
            "rng": torch.get_rng_state(),  # dropout continues as if never stopped
        }
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / CKPT)
            self.report(metrics, checkpoint=self.make_ckpt(d))

    def _deepspeed_checkpoint(self, step: int, metrics: dict) -> None:
        """Every rank saves its ZeRO shard (weights, optimizer, schedule) and reports its
        folder; Ray Train merges them into one checkpoint. Rank 0 adds the trial's step and
        hyperparameters (promotion consolidates the fp32 weights from the shards)."""
        import torch.distributed as dist

        with tempfile.TemporaryDirectory() as d:
            self.engine.save_checkpoint(d, tag=TAG)
            if self.rank == 0:
                state = {"step": step, "trial": self.name, "hp": self.hp.model_dump()}
                torch.save({**state, "rng": torch.get_rng_state()}, Path(d) / CKPT)
            dist.barrier()
            self.report(metrics, checkpoint=self.make_ckpt(d))


def run_trial(
    config: dict,
    data: TaskData,
    report,
    checkpoint,
    make_checkpoint,
    rank=0,
    world=1,
    wrap=None,
    device: str | torch.device = "cpu",
) -> None:
    """Train one configuration; evaluate every `train.eval_every` steps and report each
    evaluation with a checkpoint. `report` / `checkpoint` / `make_checkpoint` are Tune's (single
    worker) or Ray Train's (a worker of a multi-worker or DeepSpeed trial); `wrap` makes the
    model data-parallel (DDP; a DeepSpeed engine is its own wrapper)."""
    from lmplatform.train.loop import fit

    job = data.cfg
    hp = TrialParams.of(job, config)
    torch.manual_seed(job.train.seed)
    model = build_model(data, hp).to(device)
    encoder = task_encoder(data)
    per = steps_per_epoch(len(data.train_rows), hp.batch_size, world)
    total = total_steps(job, hp.epochs, per)
    cfg = trial_train_config(job, hp, total)
    stepper, trained = _make_stepper(model, job, hp, cfg, world, total, wrap)
    start, donor = 0, None
    if checkpoint is not None:
        start, donor = restore(checkpoint, model, stepper, cfg, hp, total)
    if start >= total:
        return
    on_eval = TrialReporter(
        model, stepper, hp, job.task.metric, per, start, donor, report, make_checkpoint, rank
    )
    dev = eval_subset(data)
    fit(
        trained,
        _train_batches(data, encoder, hp.batch_size, start, rank, world),
        cfg,
        total_steps=total,
        stepper=stepper,
        start_step=start,
        evaluate=lambda m: evaluate(
            m.module if hasattr(m, "module") else m,
            data,
            dev,
            encoder,
            zero_stage=job.scaling.zero_stage,
        ),
        on_eval=on_eval,
        device=device,
        # step, loss, throughput and ETA every `train.log_every` steps (evaluations are
        # printed by the search's progress callback)
        log=(lambda line: print(line, flush=True)) if rank == 0 else None,
        log_evals=False,
        name=f"trial {on_eval.name}".strip(),
        # train.early_stopping ends a trial whose metric stopped improving: to Tune a normal
        # finish, and its best evaluation's checkpoint is the one promotion reads
        watch=(job.task.metric, "max"),
    )


def task_encoder(data: TaskData) -> TaskEncoder:
    """The task's encoder over the parent's tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(data.tokenizer_json)
    return TaskEncoder(tokenizer, data.cfg.task.type, data.cfg.task.max_seq_len)


def _make_stepper(
    model: nn.Module, job: FinetuneJobConfig, hp: TrialParams, cfg, world: int, total: int, wrap
):
    """The optimizer step for a trial and the module it trains: a DeepSpeed engine (ZeRO), or
    plain AdamW over `model`, wrapped by `wrap` when given (DDP)."""
    from lmplatform.train.loop import TorchStepper, param_groups

    groups = param_groups(model, hp.weight_decay, lr_scale_fn(model, hp.layer_decay))
    if job.scaling.zero_stage > 0:
        from lmplatform.train.deepspeed_engine import DeepSpeedStepper

        stepper = DeepSpeedStepper(model, cfg, job.scaling, world, total, groups)
        return stepper, stepper.engine
    return TorchStepper(model, cfg, total, groups), wrap(model) if wrap else model


def _train_batches(
    data: TaskData, encoder: TaskEncoder, bs: int, start: int, rank: int, world: int
):
    """This rank's training batches from step `start` on."""
    job = data.cfg
    return _batches(
        data.train_rows,
        encoder,
        bs,
        job.train.seed,
        start,
        rank,
        world,
        job.train.group_by_length,
    )


def _trial_name() -> str:
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    if not _in_tune_session():  # a Train worker of a multi-worker trial, or a direct call
        return ""
    from ray import tune

    return tune.get_context().get_trial_name() or ""


def tune_trial(config: dict, data: TaskData) -> None:
    """Function trainable for one single-worker trial (real Tune checkpoints: PBT works)."""
    from ray import tune

    from lmplatform import console

    console.quiet_ray_train_logger()  # its storage layer logs every checkpoint at INFO
    torch.set_num_threads(max(1, int(data.cfg.scaling.cpus_per_worker)))
    run_trial(
        config,
        data,
        tune.report,
        tune.get_checkpoint(),
        tune.Checkpoint.from_directory,
        device="cuda" if data.cfg.scaling.use_gpu else "cpu",  # Tune sets CUDA_VISIBLE_DEVICES
    )


def _train_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from lmplatform import console

    console.quiet_ray_train_logger()
    ctx = ray.train.get_context()
    run_trial(
        loop_config["config"],
        loop_config["data"],
        ray.train.report,
        ray.train.get_checkpoint(),
        ray.train.Checkpoint.from_directory,
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        wrap=ray.train.torch.prepare_model,
        device=ray.train.torch.get_device(),
    )


def train_driver_trial(config: dict, data: TaskData) -> None:
    """Multi-worker trial: a driver function running a TorchTrainer (Ray Train V2's pattern)."""
    import ray.train
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lmplatform.runtime import ray_storage
    from lmplatform.train.trainer import torch_trainer

    job = data.cfg
    ctx = tune.get_context()
    run_config = ray.train.RunConfig(
        name=f"{ctx.get_experiment_name()}-{ctx.get_trial_id()}",
        **ray_storage(job.output_dir, "train"),
        callbacks=[TuneReportCallback()],
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute=SELECTION, checkpoint_score_order="max"
        ),
    )
    loop_config = {"config": config, "data": data}
    torch_trainer(_train_worker, loop_config, job.scaling, run_config).fit()
