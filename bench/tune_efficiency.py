"""ASHA and TPE + ASHA vs FIFO: how much trial compute each spends to get within 0.5 points of
FIFO's best.

FIFO and ASHA run the same task, the same N configurations (drawn once from the task's search
space, handed to Tune as `points_to_evaluate`), the same concurrency, one after the other in
one process. FIFO trains every configuration to the end; ASHA stops the weak ones at its rungs.
TPE + ASHA then runs N trials of its own choosing (`search.algorithm=tpe`: `startup_trials`
seeded random draws, then proposals from the results so far) under the same ASHA.

    .venv/bin/python bench/tune_efficiency.py [--config jobs/configs/tasks/ner-sample.yaml]
        [--trials 8] [key=value …]

Last line: `asha_compute_fraction=<x> tpe_asha_compute_fraction=<y>`: trial-seconds until the
first evaluation within 0.5 points of FIFO's best, over FIFO's total trial-seconds (goals:
ASHA ≤ 0.40, TPE + ASHA ≤ 0.20).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from lmplatform.config import load_config  # noqa: E402
from lmplatform.tune.config import FinetuneJobConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def evaluations(sr, metric: str) -> list[tuple[float, float, float]]:
    """(wall-clock timestamp, seconds of this evaluation, metric in points) of every report."""
    rows = []
    for r in sr.results:
        df = r.metrics_dataframe
        if df is None or df.empty:
            continue
        for _, x in df.iterrows():
            rows.append(
                (float(x["timestamp"]), float(x["time_this_iter_s"]), 100 * float(x[metric]))
            )
    return sorted(rows)


def main() -> None:
    from lmplatform.runtime import setup_process

    setup_process()  # before Ray or datasets is imported: loopback, token, console
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "jobs/configs/tasks/ner-sample.yaml"))
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = tempfile.mkdtemp(prefix="tune-eff-")
    base = load_config(FinetuneJobConfig, args.config, [f"output_dir={out}", *args.overrides])
    from lmplatform.cli.common import require_model
    from lmplatform.runtime import init_ray
    from lmplatform.tune.data import load_task_data
    from lmplatform.tune.search import run_search
    from lmplatform.tune.space import sample_points

    require_model(base.registry, "pretrained", base.parent)
    init_ray(quiet=True)
    data = load_task_data(base)
    points = sample_points(base.search.space, args.trials, base.train.seed)
    metric = base.task.metric
    runs = {}
    for label, sched, algorithm in (
        ("FIFO", "fifo", "random"),
        ("ASHA", "asha", "random"),
        ("TPE + ASHA", "asha", "tpe"),
    ):
        job = base.model_copy(
            update={
                "name": f"{base.name}-{label.replace(' + ', '-').lower()}",
                "search": base.search.model_copy(
                    # the searches are compared with each other, not with the baseline
                    update={
                        "scheduler": sched,
                        "algorithm": algorithm,
                        "num_samples": args.trials,
                        "max_time_s": None,
                        "baseline": False,
                    }
                ),
            }
        )
        given = points if algorithm == "random" else None  # TPE chooses its own
        runs[label] = evaluations(run_search(job, data, verbose=0, points=given), metric)
    fifo = runs["FIFO"]
    fifo_total = sum(s for _, s, _ in fifo)
    target = max(m for _, _, m in fifo) - 0.5
    print(f"task {base.task.name}, {args.trials} trials each, metric {metric} (points)")
    fractions = []
    for label, evals in runs.items():
        best, total = max(m for _, _, m in evals), sum(s for _, s, _ in evals)
        print(f"{label}: best {best:.2f}, {len(evals)} evaluations, {total:.1f} trial-seconds")
        if label != "FIFO":
            spent = seconds_to_reach(evals, target)
            when = f"after {spent:.1f} trial-seconds" if spent < float("inf") else "never"
            print(f"  {label} came within 0.5 points of FIFO's best ({target:.2f}): {when}")
            key = label.replace(" + ", "_").lower()
            fractions.append(f"{key}_compute_fraction={spent / fifo_total:.3f}")
    print(" ".join(fractions))


def seconds_to_reach(evals: list[tuple[float, float, float]], target: float) -> float:
    """Trial-seconds spent, in wall-clock order, until the first evaluation at `target` or
    above (inf: never)."""
    spent = 0.0
    for _ts, s, m in evals:
        spent += s
        if m >= target:
            return spent
    return float("inf")


if __name__ == "__main__":
    main()
