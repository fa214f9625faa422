"""Running a search with Ray Tune: trials, progress lines, the per-trial table and plot."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from lmplatform import storage
from lmplatform.config import ConfigError
from lmplatform.runtime import ray_storage
from lmplatform.tasks.baseline import Baseline
from lmplatform.tune.config import SEARCHABLE, FinetuneJobConfig
from lmplatform.tune.data import TaskData, TaskRows, load_task_data
from lmplatform.tune.space import in_space, make_scheduler, search_algorithm
from lmplatform.tune.trial import SELECTION, train_driver_trial, tune_trial


@dataclass
class SearchResult:
    job: FinetuneJobConfig
    data: TaskData
    results: object  # ray.tune.ResultGrid
    table: list[dict]
    run_dir: str
    """output_dir/<search name>: a local folder or a URI."""
    experiment_path: str
    baseline: Baseline | None = None
    """The classic baseline on the same rows (None: off, none for the type, or no sklearn)."""


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
    baseline: Baseline | None = None,
) -> SearchResult:
    """Run the Tune search for `job`; returns the result grid and a per-trial table.
    `points`: exact configurations to try first (benchmarks compare schedulers on the same);
    `baseline`: one already fitted on the same rows (benchmarks run several searches)."""
    from ray import tune

    # before any work: an earlier search that is not this task's is a config error
    alg, param_space = search_algorithm(
        job, [*job.search.points, *(points or [])], told_trials(job)
    )
    data = data or load_task_data(job)
    # a budget the scheduler cannot work with is a config error, not a failed search
    scheduler = make_scheduler(job, len(data.train_rows))
    run_dir = storage.join(job.output_dir, job.name)  # results written by the driver
    # before any trial: the data a failed search ran on is worth reading too
    storage.write_json(storage.join(run_dir, "data_report.json"), data.data_report)
    if baseline is None and job.search.baseline:
        baseline = search_baseline(job, data)
    if baseline is not None:
        storage.write_json(storage.join(run_dir, "baseline.json"), baseline.to_json())
    tuner = tune.Tuner(
        _trainable(job, data),
        param_space=param_space,
        tune_config=_tune_config(job, scheduler, alg),
        run_config=_run_config(job, data, verbose),
    )
    results = tuner.fit()
    table = _write_results(job, results, run_dir)
    return SearchResult(job, data, results, table, run_dir, results.experiment_path, baseline)


def told_trials(job: FinetuneJobConfig) -> list[tuple[dict, float]]:
    """(configuration, best metric) of each finished trial of `search.warm_start_from` that
    this space can draw: what TPE is told before its first proposal."""
    src = job.search.warm_start_from
    if not src:
        return []
    folder = src if "/" in src else storage.join(job.output_dir, src)
    path = storage.join(folder, "trials.json")
    if not storage.exists(path):
        raise ConfigError(
            f"search.warm_start_from={src!r}: no {path} (a search writes it when it ends)"
        )
    earlier = storage.read_json(path)
    metric = job.task.metric
    if (earlier["task"], earlier["metric"]) != (job.task.name, metric):
        raise ConfigError(
            f"search.warm_start_from={src!r} searched task {earlier['task']!r} for "
            f"{earlier['metric']}; this search is task {job.task.name!r} for {metric}"
        )
    # what Tune tells TPE of a trial it runs: the metric it ended at
    told = [
        ({k: row[k] for k in job.search.space}, row[f"last_{metric}"])
        for row in earlier["trials"]
        if row.get("status") == "done"
        and in_space(job.search.space, row)
        and math.isfinite(row.get(f"last_{metric}", math.nan))
    ]
    skipped = len(earlier["trials"]) - len(told)
    other = earlier.get("parent") != job.parent
    print(
        f"[search {job.name}] warm start: TPE is told {len(told)} trial(s) of {folder}"
        + (f"; {skipped} not finished or outside this space" if skipped else "")
        + (
            f"; they trained from {earlier.get('parent')}, this search from {job.parent}"
            if other
            else ""
        ),
        flush=True,
    )
    return told


def search_baseline(job: FinetuneJobConfig, data: TaskData | TaskRows) -> Baseline | None:
    """The task type's baseline fitted on the search's training rows, scored on the whole dev
    set, and said in one line: the figure every trial has to beat."""
    from lmplatform.tasks import task_type
    from lmplatform.tasks.baseline import fit_baseline

    tt = task_type(job.task.type)
    b = fit_baseline(tt, data.train_rows, data.dev_rows, data.label_names, data.classes)
    if b is not None:
        metric = job.task.metric
        print(
            f"[search {job.name}] baseline ({b.model}, {b.train_rows} training rows, "
            f"{b.seconds:.1f} s): dev {metric} {b.metrics[metric]:.4f} on all "
            f"{len(data.dev_rows)} dev rows",
            flush=True,
        )
    return b


def _trainable(job: FinetuneJobConfig, data: TaskData):
    """One trial with its data and the resources it asks Ray for."""
    from ray import tune

    if job.trials_on_ray_train:
        trainable = tune.with_parameters(train_driver_trial, data=data)
        # the driver itself needs little; its TorchTrainer asks for the workers' resources
        return tune.with_resources(trainable, {"CPU": 0.01})
    trainable = tune.with_parameters(tune_trial, data=data)
    return tune.with_resources(
        trainable,
        {"CPU": job.scaling.cpus_per_worker, "GPU": 1 if job.scaling.use_gpu else 0},
    )


def _tune_config(job: FinetuneJobConfig, scheduler, search_alg):
    from ray import tune

    s = job.search
    return tune.TuneConfig(
        metric=job.task.metric,
        mode="max",
        scheduler=scheduler,
        num_samples=s.num_samples,
        time_budget_s=s.max_time_s,
        reuse_actors=False,
        search_alg=search_alg,
    )


def _run_config(job: FinetuneJobConfig, data: TaskData, verbose: int):
    from ray import tune

    from lmplatform import tracking

    return tune.RunConfig(
        name=job.name,
        **ray_storage(job.output_dir, "tune"),
        # PBT exploits a donor's *latest* checkpoint: keep the newest few rather than the
        # best two, which could delete it before another trial copies it
        checkpoint_config=(
            tune.CheckpointConfig(num_to_keep=4)
            if job.search.scheduler == "pbt"
            else tune.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=SELECTION,
                checkpoint_score_order="max",
            )
        ),
        verbose=verbose,
        callbacks=[
            progress_callback(job.name, job.task.metric),
            *tracking.tune_callbacks(
                job.tracking,
                job.name,
                job.output_dir,
                {"task": job.task.name, "parent": data.parent_ref},
            ),
        ],
    )


def _write_results(job: FinetuneJobConfig, results, run_dir: str) -> list[dict]:
    """trials.csv and trials.png in `run_dir`; returns the table."""
    from lmplatform.plots import trials_plot

    metric = job.task.metric
    table = trial_table(results, metric)
    write_table(table, storage.join(run_dir, "trials.csv"))
    # typed, with what was searched for: a later search's warm_start_from reads it
    storage.write_json(
        storage.join(run_dir, "trials.json"),
        {"task": job.task.name, "metric": metric, "parent": job.parent, "trials": table},
    )
    trials_plot(
        results, metric, storage.join(run_dir, "trials.png"), title=f"{job.name}: {job.task.name}"
    )
    return table


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
