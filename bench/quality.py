"""Does pretraining pay? Dev metric of the promoted model per task, from each start, equal budgets.

For each task (default: sst2, agnews, conll2003, spam, srl on the shared data) the task's own search
runs once per start, with the same configurations (drawn once from the task's space), trial
count, time budget and data:
- `random`: the parent's architecture and tokenizer with random weights (no pretraining);
- `general`: the parent named in the task config (bert-shared-cpu: `jobs/pretrain.py --config
  jobs/configs/pretrain/bert-shared-cpu.yaml`, about 25 min on 2 cores);
- `adapted` (with `--adapt-steps N`): the parent continued for N masked-LM steps on the task's own
  training text, labels unused (task-adaptive pretraining, `jobs/configs/pretrain/adapt-cpu.yaml`
  with `init_from`); the minutes it took are printed beside it.
The best pretrained start's winner is published and promoted (as `jobs/finetune.py` would); the
others are only scored. Every score is on the whole dev set.

A seq2seq task (`--tasks multi30k-de-en`) has no pretrained start: its config's own run is
timed and scored (BLEU, beam search, whole dev set), with its greedy BLEU-vs-minutes curve
(`bleu_curve.png` next to the run) and the goal BLEU >= 30 within 30 minutes of training.

    .venv/bin/python bench/quality.py [--tasks sst2 agnews] [--search-minutes 20]
        [--adapt-steps 300] [key=value …]   (overrides for every task config)

Goals (dev, best pretrained start): srl argument F1 >= 70, multi30k-de-en BLEU >= 30; each is
printed as met or not met.
Last line: `quality <task>=<best pretrained>/<random> …` (points) and `min_gain=<points>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from lmplatform.config import load_config  # noqa: E402
from lmplatform.pretraining.config import PretrainJobConfig  # noqa: E402
from lmplatform.tune.config import FinetuneJobConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADAPT = ROOT / "jobs" / "configs" / "pretrain" / "adapt-cpu.yaml"
GOALS = {"srl": 70.0, "multi30k-de-en": 30.0}  # dev points the shipped config should reach
TRAIN_MINUTES = {"multi30k-de-en": 30.0}  # ... within this much training


def points(metric: str, value: float) -> float:
    """Scores in points: fractions x 100; BLEU and chrF already are (sacrebleu's scale)."""
    return value if metric in ("bleu", "chrf") else 100 * value


def translation_row(task: str, job: FinetuneJobConfig) -> dict:
    """A seq2seq task's own run: promoted BLEU (beam, whole dev set), minutes of training, and
    the greedy BLEU-vs-minutes curve of its evaluations (also in the run's trials.png)."""
    from lmplatform.tune.promotion import promote
    from lmplatform.tune.search import run_search

    sr = run_search(job, verbose=0)
    out = promote(sr, force=True)
    df = sr.results[0].metrics_dataframe
    minutes = float(df["trial_seconds"].max()) / 60
    print(f"[quality] {task}: greedy BLEU ({job.search.eval_rows or 'all'} dev pairs) by minute:")
    for m, b in zip(df["trial_seconds"] / 60, df["bleu"]):
        print(f"[quality]   {m:5.1f} min  {b:5.2f}")
    print(
        f"[quality] {task}: BLEU {out['value']:.2f} (beam) after {minutes:.1f} min; "
        f"plots: {sr.run_dir}/trials.png"
    )
    return {"value": out["value"], "minutes": minutes, "version": out["version"]}


def ran(sr) -> int:
    """Trials that produced results (the rest did not start before the time budget ran out)."""
    return sum(1 for r in sr.table if r["status"] == "done")


def adapt(job: FinetuneJobConfig, steps: int, out: str) -> tuple[str, float]:
    """Continue the task's parent on the task's training text; returns (its ref, minutes)."""
    from lmplatform.data.corpus import CorpusConfig
    from lmplatform.pretraining.run import export_and_register, run_pretraining

    cfg = load_config(
        PretrainJobConfig,
        ADAPT,
        [
            f"name={job.parent.partition('@')[0]}-{job.task.name}",
            f"init_from={job.parent}",
            f"registry={job.registry.written}",
            f"output_dir={out}",
            f"train.max_steps={steps}",
            f"train.checkpoint_every={steps}",
        ],
    )
    # the task's own training file, read as unlabelled text: one document per row / sentence
    cfg = cfg.model_copy(
        update={"corpus": CorpusConfig(source=job.task.train, document_split="line", min_chars=1)}
    )
    t0 = time.time()
    prepared, result = run_pretraining(cfg)
    name, version, _ = export_and_register(cfg, prepared, result)
    return f"{name}@{version}", (time.time() - t0) / 60


def main() -> None:
    from lmplatform.runtime import setup_process

    setup_process()  # before Ray or datasets is imported: loopback, token, console
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "agnews", "conll2003", "spam", "srl"])
    p.add_argument(
        "--search-minutes", type=float, default=None, help="every search's budget (default: config)"
    )
    p.add_argument(
        "--adapt-steps", type=int, default=0, help="task-adaptive pretraining steps (0: skip)"
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    # `--tasks a b key=value`: argparse hands the overrides to --tasks; take them back
    args.overrides += [t for t in args.tasks if "=" in t]
    args.tasks = [t for t in args.tasks if "=" not in t]
    out = tempfile.mkdtemp(prefix="quality-")
    from lmplatform.cli.common import require_model
    from lmplatform.runtime import init_ray
    from lmplatform.tune.data import load_task_data
    from lmplatform.tune.promotion import best_model, promote
    from lmplatform.tune.search import run_search
    from lmplatform.tune.space import sample_points

    budget = [f"search.max_time_s={60 * args.search_minutes:g}"] if args.search_minutes else []
    jobs = {
        task: load_config(
            FinetuneJobConfig,
            ROOT / "jobs" / "configs" / "tasks" / f"{task}.yaml",
            [f"output_dir={out}", *budget, *args.overrides],
        )
        for task in args.tasks
    }
    for job in jobs.values():  # before any work: on a fresh checkout, say what to build
        if job.parent is not None:
            require_model(job.registry, "pretrained", job.parent)
    init_ray(quiet=True)
    rows, translation = [], {}
    for task, job in jobs.items():
        if job.parent is None:  # seq2seq: trained from scratch, no start to compare
            translation[task] = translation_row(task, job)
            continue
        starts = {"random": (f"random:{job.parent}", 0.0), "general": (job.parent, 0.0)}
        if args.adapt_steps:
            starts["adapted"] = adapt(job, args.adapt_steps, out)
        # the same configurations for every start: a fair comparison at a small trial count
        points = sample_points(job.search.space, job.search.num_samples, job.train.seed)
        res = {}
        for label, (parent, _) in starts.items():
            j = job.model_copy(update={"name": f"{job.name}-{label}", "parent": parent})
            sr = run_search(j, load_task_data(j), verbose=0, points=points)
            _, _, dev = best_model(sr)
            res[label] = {"value": dev[j.task.metric], "trials": ran(sr), "search": sr}
            print(
                f"[quality] {task} {label} ({parent}): dev {j.task.metric} "
                f"{100 * res[label]['value']:.2f} ({res[label]['trials']} trials ran)",
                flush=True,
            )
        best = max((k for k in res if k != "random"), key=lambda k: res[k]["value"])
        promoted = promote(res[best]["search"])
        rows.append((task, job.task.metric, res, starts, best, promoted["version"]))

    print()
    for task, r in translation.items():
        verdict = (
            "met"
            if r["value"] >= GOALS[task] and r["minutes"] <= TRAIN_MINUTES[task]
            else "NOT met"
        )
        print(
            f"goal {task} bleu >= {GOALS[task]:g} within {TRAIN_MINUTES[task]:g} min: {verdict} "
            f"(measured BLEU {r['value']:.2f}, beam 4, after {r['minutes']:.1f} min; "
            f"promoted {task}@{r['version']})"
        )
    if not rows:
        return
    adapted = bool(args.adapt_steps)
    head = "| task | metric | random init | general | " + ("adapted | " if adapted else "")
    print(head + "gain (best − random) | promoted |")
    print("|---" * (head.count("|") + 1) + "|")
    gains = {}
    for task, metric, res, starts, best, version in rows:
        pts = {k: 100 * v["value"] for k, v in res.items()}
        gains[task] = pts[best] - pts["random"]
        cells = [f"{pts['random']:.2f}", f"{pts['general']:.2f}"]
        if adapted:
            cells.append(f"{pts['adapted']:.2f} (+{starts['adapted'][1]:.1f} min)")
        print(
            f"| {task} | {metric} | " + " | ".join(cells) + f" | {gains[task]:+.2f} ({best}) | "
            f"{task}@{version} |"
        )
    for task, metric, res, *_ in rows:
        if task in GOALS:
            got = 100 * max(v["value"] for k, v in res.items() if k != "random")
            verdict = "met" if got >= GOALS[task] else "NOT met"
            print(f"goal {task} {metric} >= {GOALS[task]:g}: {verdict} (measured {got:.2f})")
    print(
        "quality "
        + " ".join(
            f"{t}={100 * max(v['value'] for k, v in r.items() if k != 'random'):.2f}"
            f"/{100 * r['random']['value']:.2f}"
            for t, _, r, *_ in rows
        )
        + f" min_gain={min(gains.values()):.2f}"
    )


if __name__ == "__main__":
    main()
