"""ASHA vs FIFO: how much trial compute ASHA spends to get within 0.5 points of FIFO's best.

Both searches run the same task, the same N configurations (drawn once from the task's search
space, handed to Tune as `points_to_evaluate`), the same concurrency, one after the other in
one process. FIFO trains every configuration to the end; ASHA stops the weak ones at its rungs.

    .venv/bin/python bench/tune_efficiency.py [--config jobs/configs/tasks/ner-sample.yaml]
        [--trials 8] [key=value …]

Last line: `asha_compute_fraction=<x>` = ASHA's trial-seconds until its first evaluation within
0.5 points of FIFO's best, over FIFO's total trial-seconds (goal ≤ 0.40).
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
    for sched in ("fifo", "asha"):
        job = base.model_copy(
            update={
                "name": f"{base.name}-{sched}",
                "search": base.search.model_copy(
                    # the schedulers are compared with each other, not with the baseline
                    update={
                        "scheduler": sched,
                        "num_samples": args.trials,
                        "max_time_s": None,
                        "baseline": False,
                    }
                ),
            }
        )
        runs[sched] = evaluations(run_search(job, data, verbose=0, points=points), metric)
    fifo, asha = runs["fifo"], runs["asha"]
    fifo_best = max(m for _, _, m in fifo)
    fifo_total = sum(s for _, s, _ in fifo)
    asha_total = sum(s for _, s, _ in asha)
    target = fifo_best - 0.5
    spent, reached = 0.0, None
    for _ts, s, m in asha:
        spent += s
        if m >= target:
            reached = m
            break
    asha_best = max(m for _, _, m in asha)
    print(
        f"task {base.task.name}, {args.trials} identical configurations, metric {metric} (points)"
    )
    print(f"FIFO: best {fifo_best:.2f}, {len(fifo)} evaluations, {fifo_total:.1f} trial-seconds")
    print(f"ASHA: best {asha_best:.2f}, {len(asha)} evaluations, {asha_total:.1f} trial-seconds")
    if reached is None:
        print(f"ASHA never came within 0.5 points of FIFO's best ({target:.2f})")
        spent = float("inf")
    else:
        print(f"ASHA reached {reached:.2f} (target {target:.2f}) after {spent:.1f} trial-seconds")
    print(f"asha_compute_fraction={spent / fifo_total:.3f}")


if __name__ == "__main__":
    main()
