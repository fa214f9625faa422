"""Fine-tuning search with Ray Tune: one trial = one fine-tuning run of a task model.

- Single-worker trials are function trainables that report a real Tune checkpoint (weights,
  optimizer, step) at every evaluation, so ASHA can stop them and PBT can copy one trial's
  checkpoint into another and continue from it with mutated hyperparameters.
- Multi-worker trials (`scaling.num_workers > 1`) follow Ray Train V2's pattern: the trial is a
  driver function that runs a `TorchTrainer` (DDP) and forwards its reports to Tune with
  `TuneReportCallback`. Ray's bridge does not support PBT, so PBT needs single-worker trials.
- The winner is re-evaluated on the whole dev set, saved as a task model, published to the
  registry and promoted to the task's `best` only if it beats the current one.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmplatform import storage
from lmplatform.jobconfig import SEARCHABLE, FinetuneJobConfig, SearchDim
from lmplatform.models.tasks import TaskModel, build_encoder
from lmplatform.runtime import ray_storage
from lmplatform.tasks import task_type
from lmplatform.tasks.data import load_labelled
from lmplatform.tasks.encoding import TaskEncoder

CKPT = "trial.pt"
# hyperparameters PBT may change in a running trial: they only touch the optimizer
PBT_MUTABLE = ("lr", "weight_decay")


# --------------------------------------------------------------------------- inputs


@dataclass
class TaskData:
    """Everything a trial needs, resolved once on the driver and shipped by Tune."""

    job: dict
    registry: str  # absolute URI: trials on other nodes fetch the parent from it themselves
    parent_ref: str  # "name@version" or "random:name@version"
    model_config: dict  # parent's model config (architecture for random init)
    tokenizer_json: str
    tokenizer_hash: str
    label_names: list[str]  # the head's outputs: classes, IOB2 tags, O + roles
    classes: list[str]  # what per-class scores are keyed by: classes, entity types, roles
    train_rows: list[dict]
    dev_rows: list[dict]
    fingerprints: dict = field(default_factory=dict)

    @property
    def cfg(self) -> FinetuneJobConfig:
        return FinetuneJobConfig.model_validate(self.job)


def load_task_data(job: FinetuneJobConfig) -> TaskData:
    """Resolve the parent model in the registry and read and validate the task's data."""
    from lmplatform.hfimport import resolve_pretrained
    from lmplatform.models.io import read_config
    from lmplatform.registry import Registry

    reg = Registry(job.registry)
    random_init = job.parent.startswith("random:")
    ref = job.parent.removeprefix("random:")
    name, version = resolve_pretrained(reg, ref)  # an hf: checkpoint is imported first
    path = reg.local_path("pretrained", name, version)
    meta = reg.metadata("pretrained", name, version)
    cfg = read_config(path)
    t = job.task
    train = load_labelled(t.train, t.type, t.labels, t.max_bad_fraction)
    dev = load_labelled(t.dev, t.type, train.labels, t.max_bad_fraction)
    tt = task_type(t.type)
    return TaskData(
        job=job.model_dump(mode="json"),
        registry=reg.uri,
        parent_ref=("random:" if random_init else "") + f"{name}@{version}",
        model_config=cfg["model"],
        tokenizer_json=(path / "tokenizer.json").read_text(),
        tokenizer_hash=meta.get("lineage", {}).get("tokenizer_hash", ""),
        label_names=tt.outputs(train.labels, t.label_names),
        classes=tt.classes(train.labels, t.label_names),
        train_rows=_subset(train.dataset.to_list(), t.max_train_rows),
        dev_rows=dev.dataset.to_list(),
        fingerprints={"train": train.fingerprint, "dev": dev.fingerprint},
    )


def _subset(rows: list[dict], cap: int | None) -> list[dict]:
    if cap is None or cap >= len(rows):
        return rows
    keep = np.random.default_rng(0).permutation(len(rows))[:cap]
    return [rows[i] for i in sorted(keep)]


# --------------------------------------------------------------------------- model


def build_model(data: TaskData, hp: dict) -> TaskModel:
    from lmplatform.models.io import model_config, task_model_from_pretrained

    t = data.cfg.task
    n = len(data.label_names)
    frozen = hp["transfer"] == "frozen"
    layout = task_type(t.type).layout
    if not data.parent_ref.startswith("random:"):
        from lmplatform.registry import Registry

        name, version = data.parent_ref.split("@")
        path = Registry(data.registry).local_path("pretrained", name, version)  # on this node
        return task_model_from_pretrained(
            path, t.type, n, frozen=frozen, dropout=hp["dropout"], layout=layout
        )
    encoder = build_encoder(model_config({"model": data.model_config}))
    return TaskModel(encoder, t.type, n, dropout=hp["dropout"], frozen=frozen, layout=layout)


def lr_scale_fn(model: TaskModel, layer_decay: float):
    """Layer-wise LR decay: the head at the full rate, each layer below it `layer_decay` times
    the one above (the model says how deep each parameter sits)."""
    L = model.cfg.num_layers
    return lambda name: layer_decay ** (L + 1 - model.layer_depth(name))


# --------------------------------------------------------------------------- one trial


def hyperparameters(job: FinetuneJobConfig, config: dict) -> dict:
    """Trial hyperparameters: searched values over the job's defaults."""
    hp = {
        "lr": job.train.lr,
        "batch_size": job.train.batch_size,
        "epochs": job.train.epochs,
        "warmup_ratio": job.train.warmup_ratio,
        "weight_decay": job.train.weight_decay,
        "dropout": 0.1,
        "layer_decay": job.layer_decay,
        "transfer": job.transfer,
    }
    hp.update({k: v for k, v in config.items() if k in SEARCHABLE})
    hp["batch_size"] = int(hp["batch_size"])
    return hp


def total_steps(job: FinetuneJobConfig, epochs: float | None, per_epoch: int) -> int:
    return max(1, round(per_epoch * epochs)) if epochs else job.train.max_steps


def steps_per_epoch(n_rows: int, batch_size: int, world: int) -> int:
    return max(1, n_rows // (batch_size * world))


def _batches(
    rows: list[dict], encoder: TaskEncoder, bs: int, seed: int, start: int, rank=0, world=1
):
    """Batches from global step `start` on: a fixed permutation per epoch, so a restored
    trial (PBT, failure) sees the same stream from where its checkpoint left off."""
    per = steps_per_epoch(len(rows), bs, world)
    step = start
    while True:
        epoch, k = divmod(step, per)
        order = np.random.default_rng(seed + epoch).permutation(len(rows))
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
) -> dict:
    """Dev metrics of `model` on `rows`: the task's metrics, dev_loss, and F1 per class (per
    entity type for NER) as flat `f1/<label>` values that Tune records for every evaluation.
    `detail`: also precision, recall, F1 and support per class under `per_class`."""
    was_training = model.training
    model.eval()
    scorer = task_type(data.cfg.task.type).scorer(data.label_names, data.classes)
    loss_sum, n = 0.0, 0
    for i in range(0, len(rows), bs):
        chunk = rows[i : i + bs]
        batch = encoder.collate(chunk)
        out = model(**batch)
        loss_sum += float(out["loss"]) * len(chunk)
        n += len(chunk)
        scorer.add(out["logits"].float(), batch, chunk)
    model.train(was_training)
    metrics, per = scorer.result()
    metrics["dev_loss"] = loss_sum / max(n, 1)
    metrics.update({f"f1/{label}": v["f1"] for label, v in per.items()})
    if detail:
        metrics["per_class"] = per
    return metrics


def eval_subset(data: TaskData) -> list[dict]:
    return _subset(data.dev_rows, data.cfg.search.eval_rows)


def run_trial(
    config: dict, data: TaskData, report, checkpoint, make_checkpoint, rank=0, world=1, wrap=None
) -> None:
    """Train one configuration; evaluate every `train.eval_every` steps and report each
    evaluation with a checkpoint. `report` / `checkpoint` / `make_checkpoint` are Tune's (single
    worker) or Ray Train's (a worker of a multi-worker trial)."""
    from tokenizers import Tokenizer

    from lmplatform.train.loop import TorchStepper, fit, param_groups

    job = data.cfg
    hp = hyperparameters(job, config)
    torch.manual_seed(job.train.seed)
    model = build_model(data, hp)
    encoder = TaskEncoder(
        Tokenizer.from_str(data.tokenizer_json), job.task.type, job.task.max_seq_len
    )
    per = steps_per_epoch(len(data.train_rows), hp["batch_size"], world)
    total = total_steps(job, hp["epochs"], per)
    cfg = job.train.model_copy(
        update={
            "lr": hp["lr"],
            "batch_size": hp["batch_size"],
            "warmup_ratio": hp["warmup_ratio"],
            "weight_decay": hp["weight_decay"],
            "max_steps": total,
            "eval_every": min(job.train.eval_every, total),
        }
    )
    groups = param_groups(model, hp["weight_decay"], lr_scale_fn(model, hp["layer_decay"]))
    stepper = TorchStepper(model, cfg, total, groups)
    start = 0
    restored_from = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CKPT, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        stepper.optimizer.load_state_dict(state["optimizer"])
        start, restored_from = state["step"], state.get("trial")
        # PBT may have mutated lr / weight decay: the copied optimizer state keeps the old ones
        from lmplatform.train.loop import lr_lambda

        for g in stepper.optimizer.param_groups:
            g["initial_lr"] = hp["lr"] * g.get("lr_scale", 1.0)
            if g["weight_decay"] > 0:
                g["weight_decay"] = hp["weight_decay"]
        stepper.scheduler = torch.optim.lr_scheduler.LambdaLR(
            stepper.optimizer, lr_lambda(cfg, total), last_epoch=start - 1
        )
        # LambdaLR(last_epoch=k) does not set the lr for step k: do it
        for g, base in zip(stepper.optimizer.param_groups, stepper.scheduler.base_lrs):
            g["lr"] = base * lr_lambda(cfg, total)(start)
    if start >= total:
        return
    trained = wrap(model) if wrap else model
    dev = eval_subset(data)
    metric = job.task.metric
    trial_name = _trial_name()
    t0 = time.time()

    def on_eval(step: int, ev: dict) -> None:
        metrics = {
            metric: ev[metric],
            "dev_loss": ev["dev_loss"],
            "step": step,
            "epoch": step / per,
            "lr": stepper.lr,
            "trial_seconds": time.time() - t0,
            "restored_from_step": start if restored_from is not None else -1,
            **{k: v for k, v in ev.items() if k.startswith("f1/")},
        }
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": stepper.optimizer.state_dict(),
                        "step": step,
                        "trial": trial_name,
                        "hp": hp,
                    },
                    Path(d) / CKPT,
                )
                report(metrics, checkpoint=make_checkpoint(d))
            else:
                report(metrics)

    fit(
        trained,
        _batches(data.train_rows, encoder, hp["batch_size"], job.train.seed, start, rank, world),
        cfg,
        total_steps=total,
        stepper=stepper,
        start_step=start,
        evaluate=lambda m: evaluate(m.module if hasattr(m, "module") else m, data, dev, encoder),
        on_eval=on_eval,
        log=None,
        name=f"trial {trial_name}",
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

    torch.set_num_threads(max(1, int(data.cfg.scaling.cpus_per_worker)))
    run_trial(config, data, tune.report, tune.get_checkpoint(), tune.Checkpoint.from_directory)


def _train_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

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
    )


def train_driver_trial(config: dict, data: TaskData) -> None:
    """Multi-worker trial: a driver function running a TorchTrainer (Ray Train V2's pattern)."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    job = data.cfg
    ctx = tune.get_context()
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": config, "data": data},
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.scaling.num_workers,
            use_gpu=job.scaling.use_gpu,
            resources_per_worker={"CPU": job.scaling.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=f"{ctx.get_experiment_name()}-{ctx.get_trial_id()}",
            **ray_storage(job.output_dir, "train"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=job.task.metric,
                checkpoint_score_order="max",
            ),
        ),
    )
    trainer.fit()


# --------------------------------------------------------------------------- search


def search_space(space: dict[str, SearchDim]) -> dict:
    from ray import tune

    out = {}
    for k, d in space.items():
        if d.kind == "loguniform":
            out[k] = tune.loguniform(d.low, d.high)
        elif d.kind == "uniform":
            out[k] = tune.uniform(d.low, d.high)
        elif d.kind == "randint":
            out[k] = tune.randint(int(d.low), int(d.high))
        elif d.kind == "choice":
            out[k] = tune.choice(d.values)
        else:
            out[k] = tune.grid_search(d.values)
    return out


def sample_points(space: dict[str, SearchDim], n: int, seed: int = 0) -> list[dict]:
    """`n` configurations drawn from `space` with a fixed seed: the same trials for searches
    that are compared (schedulers, pretrained vs random start)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = {}
        for k, d in space.items():
            if d.kind == "loguniform":
                p[k] = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
            elif d.kind == "uniform":
                p[k] = float(rng.uniform(d.low, d.high))
            elif d.kind == "randint":
                p[k] = int(rng.integers(int(d.low), int(d.high)))
            else:
                p[k] = d.values[int(rng.integers(len(d.values)))]
        out.append(p)
    return out


def max_evaluations(job: FinetuneJobConfig, n_train: int) -> int:
    """The most evaluations any trial of the space can make (ASHA's max_t)."""
    space = job.search.space

    def bound(key, default, pick):
        d = space.get(key)
        if d is None:
            return default
        if d.kind in ("choice", "grid"):
            return pick(d.values)
        return pick([d.low, d.high - (1 if d.kind == "randint" else 0)])

    epochs = bound("epochs", job.train.epochs, lambda v: max(v) if v[0] is not None else None)
    bs = int(bound("batch_size", job.train.batch_size, min))
    total = total_steps(job, epochs, steps_per_epoch(n_train, bs, job.scaling.num_workers))
    return max(1, math.ceil(total / min(job.train.eval_every, total)))


def make_scheduler(job: FinetuneJobConfig, n_train: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    s = job.search
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_evaluations(job, n_train),
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    if s.scheduler == "pbt":
        from ray import tune

        mutations = {}
        for k in PBT_MUTABLE:
            d = s.space.get(k)
            if d is None:
                continue
            mutations[k] = (
                d.values
                if d.kind in ("choice", "grid")
                else (tune.loguniform if d.kind == "loguniform" else tune.uniform)(d.low, d.high)
            )
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=s.perturbation_interval,
            hyperparam_mutations=mutations,
            quantile_fraction=s.quantile_fraction,
            resample_probability=0.25,
        )
    return FIFOScheduler()


@dataclass
class SearchResult:
    job: FinetuneJobConfig
    data: TaskData
    results: object  # ray.tune.ResultGrid
    table: list[dict]
    run_dir: str
    """output_dir/<search name>: a local folder or a URI."""
    experiment_path: str


def progress_callback(name: str, metric: str):
    """A Tune callback printing one line per trial result, finished trial and failure: a search
    is never silent while it runs (Tune's own status table is off: verbose=0)."""
    from ray import tune

    class TrialProgress(tune.Callback):
        def __init__(self):
            self.t0, self.best, self.finished = time.time(), None, 0

        def _line(self, trials, text: str) -> None:
            best = f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else "best -"
            mins = (time.time() - self.t0) / 60
            print(
                f"[search {name}] {text} | {best} | {self.finished}/{len(trials)} trials "
                f"finished | {mins:.1f} min",
                flush=True,
            )

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(metric)
            if isinstance(value, int | float) and (self.best is None or value > self.best[0]):
                self.best = (value, trial.trial_id)
            shown = f"{value:.4f}" if isinstance(value, int | float) else "?"
            loss = result.get("dev_loss")
            self._line(
                trials,
                f"trial {trial.trial_id} step {result.get('step', '?')}: {metric} {shown}"
                + (f", dev_loss {loss:.4f}" if isinstance(loss, int | float) else ""),
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.finished += 1
            self._line(trials, f"trial {trial.trial_id} finished")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.finished += 1
            self._line(trials, f"trial {trial.trial_id} FAILED (see {trial.path})")

    return TrialProgress()


def run_search(
    job: FinetuneJobConfig,
    data: TaskData | None = None,
    verbose: int = 0,
    points: list[dict] | None = None,
) -> SearchResult:
    """Run the Tune search for `job`; returns the result grid and a per-trial table.
    `points`: exact configurations to try first (benchmarks compare schedulers on the same)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from lmplatform import tracking

    data = data or load_task_data(job)
    s = job.search
    metric = job.task.metric
    if job.scaling.num_workers > 1:
        trainable = tune.with_parameters(train_driver_trial, data=data)
        # the driver itself needs little; its TorchTrainer asks for the workers' resources
        trainable = tune.with_resources(trainable, {"CPU": 0.01})
    else:
        trainable = tune.with_parameters(tune_trial, data=data)
        trainable = tune.with_resources(
            trainable,
            {"CPU": job.scaling.cpus_per_worker, "GPU": 1 if job.scaling.use_gpu else 0},
        )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(s.space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            scheduler=make_scheduler(job, len(data.train_rows)),
            num_samples=s.num_samples,
            time_budget_s=s.max_time_s,
            reuse_actors=False,
            # the generator enforces max_concurrent itself: Tune ignores max_concurrent_trials
            # when a SearchGenerator is passed (it said so, and ran every trial at once)
            search_alg=BasicVariantGenerator(
                points_to_evaluate=points, random_state=s.seed, max_concurrent=s.max_concurrent or 0
            ),
        ),
        run_config=tune.RunConfig(
            name=job.name,
            **ray_storage(job.output_dir, "tune"),
            # PBT exploits a donor's *latest* checkpoint: keep the newest few rather than the
            # best two, which could delete it before another trial copies it
            checkpoint_config=(
                tune.CheckpointConfig(num_to_keep=4)
                if s.scheduler == "pbt"
                else tune.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute=metric, checkpoint_score_order="max"
                )
            ),
            verbose=verbose,
            callbacks=[
                progress_callback(job.name, metric),
                *tracking.tune_callbacks(
                    job.tracking,
                    job.name,
                    job.output_dir,
                    {"task": job.task.name, "parent": data.parent_ref},
                ),
            ],
        ),
    )
    results = tuner.fit()
    run_dir = storage.join(job.output_dir, job.name)  # results written by the driver
    table = trial_table(results, metric)
    write_table(table, storage.join(run_dir, "trials.csv"))
    from lmplatform.plots import trials_plot

    trials_plot(
        results, metric, storage.join(run_dir, "trials.png"), title=f"{job.name}: {job.task.name}"
    )
    return SearchResult(job, data, results, table, run_dir, results.experiment_path)


def trial_table(results, metric: str) -> list[dict]:
    """One row per trial: hyperparameters, best and last metric, evaluations, seconds, status."""
    rows = []
    for r in results:
        df = r.metrics_dataframe
        if df is None or df.empty or metric not in df:
            rows.append(
                {
                    "trial": r.path.rsplit("/", 1)[-1],
                    # no error and no result: the time budget ran out before it started
                    "status": "error" if r.error else "not run (budget)",
                }
            )
            continue
        row = {"trial": str(df["trial_id"].iloc[-1])}
        row.update({k: r.config[k] for k in sorted(r.config)})
        best_eval = df.loc[df[metric].idxmax()]
        row.update(
            {
                f"best_{metric}": float(df[metric].max()),
                f"last_{metric}": float(df[metric].iloc[-1]),
                "evaluations": int(df["training_iteration"].max()),
                "steps": int(df["step"].max()),
                "trial_seconds": float(df["time_total_s"].max()),
                "status": "error" if r.error else "done",
            }
        )
        # F1 per class at the trial's best evaluation: which classes a configuration gets right
        row.update({k: float(best_eval[k]) for k in df.columns if k.startswith("f1/")})
        rows.append(row)
    return rows


def write_table(rows: list[dict], path: str) -> None:
    import csv
    import io

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    storage.write_text(path, buf.getvalue())


def format_table(rows: list[dict], metric: str) -> str:
    cols = [
        "trial",
        *[k for k in SEARCHABLE if any(k in r for r in rows)],
        f"best_{metric}",
        "evaluations",
        "trial_seconds",
        "status",
    ]
    lines = [" | ".join(cols)]
    for r in sorted(rows, key=lambda r: -r.get(f"best_{metric}", -1)):
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append(" | ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- promotion


def best_checkpoint(results, metric: str, output_dir: str = "."):
    """The checkpoint with the highest metric over every trial and evaluation."""
    best = results.get_best_result(metric=metric, mode="max", scope="all")
    ckpt = best.get_best_checkpoint(metric=metric, mode="max") if best.best_checkpoints else None
    if ckpt is None:
        df = best.metrics_dataframe
        if "checkpoint_path" in df:  # multi-worker trials: Ray Train's checkpoint, path in metrics
            import ray.train

            row = df.loc[df[metric].idxmax()]
            # Ray Train's path inside the run storage, on that storage's filesystem
            fs = storage.arrow_filesystem(storage.join(output_dir, "train"))[0]
            ckpt = ray.train.Checkpoint(row["checkpoint_path"], filesystem=fs)
    if ckpt is None:
        raise RuntimeError(
            f"search produced no checkpoint (best trial: {best.path}, error: {best.error})"
        )
    return best, ckpt


def best_model(sr: SearchResult) -> tuple[TaskModel, dict, dict]:
    """The search's best checkpoint as a model, its training state, and its whole-dev metrics."""
    from tokenizers import Tokenizer

    job, data = sr.job, sr.data
    _, ckpt = best_checkpoint(sr.results, job.task.metric, job.output_dir)
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / CKPT, map_location="cpu", weights_only=False)
    model = build_model(data, state["hp"])
    model.load_state_dict(state["model"])
    tok = Tokenizer.from_str(data.tokenizer_json)
    encoder = TaskEncoder(tok, job.task.type, job.task.max_seq_len)
    return model, state, evaluate(model, data, data.dev_rows, encoder, detail=True)


def promote(sr: SearchResult, force: bool = False) -> dict:
    """Re-evaluate the best checkpoint on the whole dev set, publish it, promote if it wins."""
    from lmplatform import tracking
    from lmplatform.config import save_resolved
    from lmplatform.models.io import save_pretrained
    from lmplatform.registry import Registry

    job, data = sr.job, sr.data
    metric = job.task.metric
    model, state, dev = best_model(sr)
    hp = state["hp"]
    value = dev[metric]
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "export"
        tok_file = Path(td) / "tokenizer.json"
        tok_file.write_text(data.tokenizer_json)
        save_pretrained(
            model,
            out,
            tokenizer=tok_file,
            extra={
                "labels": data.label_names,
                "classes": data.classes,
                "max_seq_len": job.task.max_seq_len,
                "task_name": job.task.name,
            },
        )
        save_resolved(job, out)
        metadata = {
            "kind": "task",
            "task": job.task.name,
            "type": job.task.type,
            "labels": data.label_names,
            "classes": data.classes,
            "metric": metric,
            "value": value,
            "per_class": dev["per_class"],
            "dev": {k: v for k, v in dev.items() if k != "per_class"},
            "hyperparameters": hp,
            "parent": data.parent_ref,
            "tokenizer_hash": data.tokenizer_hash,
            "data_fingerprint": data.fingerprints,
            "search": {
                "name": job.name,
                "scheduler": job.search.scheduler,
                "trials": len(sr.table),
                "experiment": sr.experiment_path,
                "trial": state.get("trial"),
                "step": state["step"],
            },
        }
        run = tracking.find_run(
            job.tracking, job.output_dir, job.name, {"trial_name": str(state.get("trial"))}
        )
        if run is not None:
            metadata["tracking"] = run
        reg = Registry(job.registry)
        version = reg.publish("tasks", job.task.name, out, metadata)
    tracking.tag_run(run, f"tasks/{job.task.name}@{version}", reg.uri)
    promoted, previous = reg.promote(job.task.name, version, value, force=force)
    return {
        "task": job.task.name,
        "version": version,
        "metric": metric,
        "value": value,
        "promoted": promoted,
        "previous": previous,
        "hyperparameters": hp,
    }
