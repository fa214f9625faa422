"""Does pretraining pay? Dev metric of the promoted model, pretrained start vs random start.

For each task (default: sst2, agnews, conll2003, spam on the shared data) the task's own search runs
twice with the same configurations (drawn once from the task's space), trial count, time
budget and data: once from the pretrained parent
(`parent` in the task config, bert-shared-cpu: `jobs/pretrain.py --config
jobs/configs/pretrain/bert-shared-cpu.yaml`), once from `random:<parent>` (same architecture and
tokenizer, random weights). The pretrained winner is published and promoted in the registry
(as `jobs/finetune.py` would); the random-start winner is only scored. Both are scored on the
whole dev set.

    .venv/bin/python bench/quality.py [--tasks sst2 agnews conll2003] [key=value …]

Last line: `quality <task>=<pretrained>/<random> …` (points) and `min_gain=<points>`.
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
from lmplatform.jobconfig import FinetuneJobConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def ran(sr) -> int:
    """Trials that produced results (the rest did not start before the time budget ran out)."""
    return sum(1 for r in sr.table if r["status"] == "done")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "agnews", "conll2003", "spam"])
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = tempfile.mkdtemp(prefix="quality-")
    from lmplatform.cli import require_model
    from lmplatform.finetune import (
        best_model,
        load_task_data,
        promote,
        run_search,
        sample_points,
    )
    from lmplatform.runtime import init_ray

    jobs = {
        task: load_config(
            FinetuneJobConfig,
            ROOT / "jobs" / "configs" / "tasks" / f"{task}.yaml",
            [f"output_dir={out}", *args.overrides],
        )
        for task in args.tasks
    }
    for job in jobs.values():  # before any work: on a fresh checkout, say what to build
        require_model(job.registry, "pretrained", job.parent)
    init_ray(quiet=True)
    rows = []
    for task, job in jobs.items():
        scratch = job.model_copy(
            update={"name": f"{job.name}-random", "parent": f"random:{job.parent}"}
        )
        # the same configurations for both starts: a fair comparison at a small trial count
        points = sample_points(job.search.space, job.search.num_samples, job.train.seed)
        res = {}
        for label, j in (("pretrained", job), ("random", scratch)):
            sr = run_search(j, load_task_data(j), verbose=0, points=points)
            if label == "pretrained":
                o = promote(sr)
                res[label] = (o["value"], o["version"], ran(sr), o["promoted"])
            else:
                _, _, dev = best_model(sr)
                res[label] = (dev[j.task.metric], None, ran(sr), False)
            print(
                f"[quality] {task} {label}: dev {j.task.metric} {100 * res[label][0]:.2f} "
                f"({res[label][2]} trials ran)",
                flush=True,
            )
        rows.append((task, job.task.metric, res))
    print()
    print("| task | metric | pretrained (promoted) | random init | gain |")
    print("|---|---|---|---|---|")
    gains = []
    for task, metric, res in rows:
        pt, rnd = 100 * res["pretrained"][0], 100 * res["random"][0]
        gains.append(pt - rnd)
        print(
            f"| {task} | {metric} | {pt:.2f} ({res['pretrained'][1]}) | {rnd:.2f} | {pt - rnd:+.2f} |"
        )
    print(
        "quality "
        + " ".join(
            f"{t}={100 * r['pretrained'][0]:.2f}/{100 * r['random'][0]:.2f}" for t, _, r in rows
        )
        + f" min_gain={min(gains):.2f}"
    )


if __name__ == "__main__":
    main()
