"""Does pretraining pay? Dev metric of the promoted model per task, from each start, equal budgets.

For each task (default: sst2, agnews, conll2003, spam, srl on the shared data) the task's own search
runs once per start, with the same configurations (drawn once from the task's space), trial
count, time budget and data:
- `random`: the parent's architecture and tokenizer with random weights (no pretraining);
- `general`: the parent named in the task config (bert-shared-cpu: `jobs/pretrain.py --config
  jobs/configs/pretrain/bert-shared-cpu.yaml`, about 25 min on 2 cores);
- `adapted` (with `--adapt-steps N`): the parent continued for N masked-LM steps on the task's own
  training text, labels unused (task-adaptive pretraining, `jobs/configs/pretrain/adapt-cpu.yaml`
  with `init_from`); the minutes it took are printed beside it;
- `electra` (with `--electra REF`): a registered ELECTRA discriminator (`jobs/pretrain.py --config
  jobs/configs/pretrain/electra-shared-cpu.yaml`) with the same tokenizer, beside the MLM
  `general` start; `electra_vs_general` is its mean gain in points over the tasks.
- `lora` (with `--lora`): the `general` parent fine-tuned with LoRA adapters (rank 8, alpha
  16 on attention and feed-forward layers; `train.adapters`) instead of every weight: the same
  configurations and budget (each learning rate times `--lora-lr-scale`, default 1: the task
  configs' rates for BERT-mini are already high, and on sst2 LoRA at 2e-3 stayed at chance
  where 5e-4 learned), `transfer` fixed to `full` (adapters exclude frozen features);
  `lora_vs_general` is its mean gain in points.
`--skip-random` leaves out the random start (a cheaper objective comparison).
Beside them, the task type's classic `baseline` (TF-IDF 1-2-grams + linear SVM for sentences;
word features + linear SVM for NER and SRL; scikit-learn, seconds) fitted on the same training
rows, and the best start's `gain_vs_baseline` in points.
The best pretrained start's winner is published and promoted (as `jobs/finetune.py` would); the
others are only scored. Every score is on the whole dev set.

A seq2seq task (`--tasks multi30k-de-en`) has no pretrained start: its config's own run is
timed and scored (BLEU, beam search, whole dev set), with its greedy BLEU-vs-minutes curve
(`bleu_curve.png` next to the run) and the goal BLEU >= 30 within 30 minutes of training.

    .venv/bin/python bench/quality.py [--tasks sst2 agnews] [--search-minutes 20]
        [--adapt-steps 300] [--electra electra-shared-cpu] [--lora] [--skip-random] [--baseline-only]
        [key=value …]   (overrides for every task config)

Goals (dev, best pretrained start): sst2 >= 86 (dev-sentences.tsv), agnews >= 90, spam F1 >= 96,
conll2003 entity F1 >= 88, srl argument F1 >= 70, multi30k-de-en BLEU >= 30, and sst2, agnews and
spam each >= 2 points over the baseline; each is printed as met or not met.
Last line: `quality <task>=<best pretrained>/<random> …` (points), `min_gain=<points>`,
`min_gain_vs_baseline=<points>` and, with `--electra`, `electra_vs_general=<points>`, with
`--lora`, `lora_vs_general=<points>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from lmplatform.config import load_config  # noqa: E402
from lmplatform.pretraining.config import PretrainJobConfig  # noqa: E402
from lmplatform.tune.config import FinetuneJobConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADAPT = ROOT / "jobs" / "configs" / "pretrain" / "adapt-cpu.yaml"
# dev points the shipped config should reach
GOALS = {
    "sst2": 86.0,  # on dev-sentences.tsv
    "agnews": 90.0,
    "spam": 96.0,
    "conll2003": 88.0,
    "srl": 70.0,
    "multi30k-de-en": 30.0,
}
# points over the classic baseline (TF-IDF / word features + linear SVM on the same rows) the
# best pretrained start should reach: a model a user would choose over a one-second fit
BASELINE_MARGIN = {"sst2": 2.0, "agnews": 2.0, "spam": 2.0}
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
    from lmplatform.pretraining.config import adapted_to_task
    from lmplatform.pretraining.run import export_and_register, run_pretraining

    overrides = [f"registry={job.registry.written}", f"output_dir={out}"]
    overrides += [f"train.max_steps={steps}", f"train.checkpoint_every={steps}"]
    base = load_config(PretrainJobConfig, ADAPT, overrides)
    cfg = adapted_to_task(base, job.parent, job.task.name, job.task.train)
    t0 = time.time()
    prepared, result = run_pretraining(cfg)
    name, version, _ = export_and_register(cfg, prepared, result)
    return f"{name}@{version}", (time.time() - t0) / 60


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "agnews", "conll2003", "spam", "srl"])
    p.add_argument(
        "--search-minutes", type=float, default=None, help="every search's budget (default: config)"
    )
    p.add_argument(
        "--adapt-steps", type=int, default=0, help="task-adaptive pretraining steps (0: skip)"
    )
    p.add_argument(
        "--electra", default=None, help="a registered ELECTRA to compare as a start (name[@v])"
    )
    p.add_argument("--lora", action="store_true", help="also LoRA adapters on the general start")
    p.add_argument("--lora-lr-scale", type=float, default=1.0, help="LoRA's learning rates: x")
    p.add_argument("--skip-random", action="store_true", help="no random-weights start")
    p.add_argument(
        "--baseline-only",
        action="store_true",
        help="only the classic baselines (seconds, no Ray, no pretrained model needed)",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    # `--tasks a b key=value`: argparse hands the overrides to --tasks; take them back
    args.overrides += [t for t in args.tasks if "=" in t]
    args.tasks = [t for t in args.tasks if "=" not in t]
    return args


def baseline_table(jobs: dict[str, FinetuneJobConfig]) -> None:
    """Each task's classic baseline on its config's rows, as a search fits it: what a model
    has to beat, before any pretraining."""
    from lmplatform.tasks import task_type
    from lmplatform.tune.data import read_task_rows
    from lmplatform.tune.search import search_baseline

    lines = ["| task | metric | baseline | model | train rows | dev rows | seconds |"]
    lines.append("|---" * 7 + "|")
    for task, job in jobs.items():
        if task_type(job.task.type).baseline is None:
            lines.append(f"| {task} | {job.task.metric} | — | none for {job.task.type} | | | |")
            continue
        rows = read_task_rows(job)
        b = search_baseline(job, rows)
        value = "—" if b is None else f"{points(job.task.metric, b.metrics[job.task.metric]):.2f}"
        lines.append(
            f"| {task} | {job.task.metric} | {value} | {b.model if b else 'no scikit-learn'} | "
            f"{len(rows.train_rows)} | {len(rows.dev_rows)} | {b.seconds if b else 0:.1f} |"
        )
    print("\n".join(lines))


@dataclass
class Row:
    """One task's results: every start's whole-dev score and search, and the baseline's."""

    task: str
    metric: str
    res: dict  # start -> {"value", "trials", "search"}
    starts: dict  # start -> (parent, minutes it took to make)
    best: str  # the best pretrained start
    version: str  # what it published
    baseline: float | None

    def best_points(self) -> float:
        return 100 * self.res[self.best]["value"]


def task_row(task: str, job: FinetuneJobConfig, args, out: str) -> Row:
    """The task's search from every start on the same configurations, and its baseline
    (fitted once: every start trains on the same rows); the best pretrained start promoted."""
    from lmplatform.registry.store import RegistryError
    from lmplatform.tune.data import load_task_data
    from lmplatform.tune.promotion import baseline_verdict, best_model, describe_baseline, promote
    from lmplatform.tune.search import run_search, search_baseline
    from lmplatform.tune.space import sample_points

    starts = {} if args.skip_random else {"random": (f"random:{job.parent}", 0.0)}
    starts["general"] = (job.parent, 0.0)
    if args.adapt_steps:
        starts["adapted"] = adapt(job, args.adapt_steps, out)
    if args.electra:
        starts["electra"] = (args.electra, 0.0)
    if args.lora:
        starts["lora"] = (job.parent, 0.0)
    # the same configurations for every start: a fair comparison at a small trial count
    points = sample_points(job.search.space, job.search.num_samples, job.train.seed)
    res, baseline = {}, None
    for i, (label, (parent, _)) in enumerate(starts.items()):
        j = job.model_copy(update={"name": f"{job.name}-{label}", "parent": parent})
        pts = points
        if label == "lora":
            j, pts = with_lora(j, points, args.lora_lr_scale)
        data = load_task_data(j)
        if i == 0 and job.search.baseline:
            baseline = search_baseline(j, data)
        j = j.model_copy(update={"search": j.search.model_copy(update={"baseline": False})})
        sr = run_search(j, data, verbose=0, points=pts, baseline=baseline)
        _, _, dev = best_model(sr)
        res[label] = {"value": dev[j.task.metric], "trials": ran(sr), "search": sr}
        print(
            f"[quality] {task} {label} ({parent}): dev {j.task.metric} "
            f"{100 * res[label]['value']:.2f} ({res[label]['trials']} trials ran)",
            flush=True,
        )
    best = max((k for k in res if k != "random"), key=lambda k: res[k]["value"])
    try:
        version = promote(res[best]["search"])["version"]
    except RegistryError as e:  # published, but the registry refuses to rank it: say so, go on
        print(f"[quality] {task}: not promoted: {e}", flush=True)
        version = "not promoted"
    verdict = baseline_verdict(res[best]["search"], res[best]["value"])
    print(f"[quality] {task}: {describe_baseline(verdict)}", flush=True)
    base = baseline.metrics[job.task.metric] if baseline is not None else None
    return Row(task, job.task.metric, res, starts, best, version, base)


def with_lora(job: FinetuneJobConfig, points: list[dict], lr_scale: float):
    """The job training LoRA adapters, and its configurations: the same ones, each learning
    rate scaled, full transfer (adapters exclude frozen features)."""
    from lmplatform.train.config import Adapters

    train = job.train.model_copy(update={"adapters": Adapters(), "lr": job.train.lr * lr_scale})
    # a preset point names only the space's keys: transfer only where it is searched
    pts = [
        {
            **p,
            **({"lr": p["lr"] * lr_scale} if "lr" in p else {}),
            **({"transfer": "full"} if "transfer" in p else {}),
        }
        for p in points
    ]
    return job.model_copy(update={"train": train, "transfer": "full"}), pts


def print_translation_goals(translation: dict) -> None:
    for task, r in translation.items():
        met = r["value"] >= GOALS[task] and r["minutes"] <= TRAIN_MINUTES[task]
        print(
            f"goal {task} bleu >= {GOALS[task]:g} within {TRAIN_MINUTES[task]:g} min: "
            f"{'met' if met else 'NOT met'} (measured BLEU {r['value']:.2f}, beam 4, after "
            f"{r['minutes']:.1f} min; promoted {task}@{r['version']})"
        )


COLUMNS = {
    "random": "random init",
    "general": "general (MLM)",
    "adapted": "adapted",
    "electra": "ELECTRA",
    "lora": "LoRA (general)",
}


def print_table(rows: list[Row]) -> None:
    """The markdown table: baseline, every start, the gains, what was promoted."""
    starts = [k for k in COLUMNS if k in rows[0].res]
    head = "| task | metric | baseline | " + " | ".join(COLUMNS[k] for k in starts) + " | "
    head += "gain (best − random) | gain_vs_baseline | promoted |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        pts = {k: 100 * v["value"] for k, v in r.res.items()}
        cells = ["—" if r.baseline is None else f"{100 * r.baseline:.2f}"]
        for k in starts:
            made = r.starts[k][1]
            cells.append(f"{pts[k]:.2f}" + (f" (+{made:.1f} min)" if made else ""))
        random = f"{r.best_points() - pts['random']:+.2f}" if "random" in pts else "—"
        cells.append(f"{random} ({r.best})")
        gain = None if r.baseline is None else r.best_points() - 100 * r.baseline
        cells.append("—" if gain is None else f"{gain:+.2f}")
        print(f"| {r.task} | {r.metric} | " + " | ".join(cells) + f" | {r.task}@{r.version} |")


def print_goals(rows: list[Row]) -> None:
    """Each goal of the best pretrained start, met or not: absolute, and over the baseline."""
    for r in rows:
        got = r.best_points()
        goals = {}
        if r.task in GOALS:
            goals[f"{GOALS[r.task]:g}"] = GOALS[r.task]
        if r.task in BASELINE_MARGIN and r.baseline is not None:
            need = 100 * r.baseline + BASELINE_MARGIN[r.task]
            goals[f"baseline + {BASELINE_MARGIN[r.task]:g} ({need:.2f})"] = need
        for said, need in goals.items():
            verdict = "met" if got >= need else "NOT met"
            print(f"goal {r.task} {r.metric} >= {said}: {verdict} (measured {got:.2f})")


def summary_line(rows: list[Row]) -> str:
    def random(r: Row) -> str:
        return f"{100 * r.res['random']['value']:.2f}" if "random" in r.res else "—"

    pairs = " ".join(f"{r.task}={r.best_points():.2f}/{random(r)}" for r in rows)
    line = f"quality {pairs}"
    if "random" in rows[0].res:
        gains = [r.best_points() - 100 * r.res["random"]["value"] for r in rows]
        line += f" min_gain={min(gains):.2f}"
    vs = [r.best_points() - 100 * r.baseline for r in rows if r.baseline is not None]
    line += f" min_gain_vs_baseline={min(vs):.2f}" if vs else ""
    if "electra" in rows[0].res:
        diff = [100 * (r.res["electra"]["value"] - r.res["general"]["value"]) for r in rows]
        line += f" electra_vs_general={sum(diff) / len(diff):+.2f}"
    if "lora" in rows[0].res:
        diff = [100 * (r.res["lora"]["value"] - r.res["general"]["value"]) for r in rows]
        line += f" lora_vs_general={sum(diff) / len(diff):+.2f}"
    return line


def main() -> None:
    from lmplatform.runtime import setup_process

    setup_process()  # before Ray or datasets is imported: loopback, token, console
    args = parse_args()
    out = tempfile.mkdtemp(prefix="quality-") if not args.baseline_only else "."
    from lmplatform.cli.common import require_model
    from lmplatform.runtime import init_ray

    budget = [f"search.max_time_s={60 * args.search_minutes:g}"] if args.search_minutes else []
    jobs = {
        task: load_config(
            FinetuneJobConfig,
            ROOT / "jobs" / "configs" / "tasks" / f"{task}.yaml",
            [f"output_dir={out}", *budget, *args.overrides],
        )
        for task in args.tasks
    }
    if args.baseline_only:
        baseline_table(jobs)
        return
    for job in jobs.values():  # before any work: on a fresh checkout, say what to build
        if job.parent is not None:
            require_model(job.registry, "pretrained", job.parent)
            if args.electra:
                require_model(job.registry, "pretrained", args.electra)
    init_ray(quiet=True)
    rows, translation = [], {}
    for task, job in jobs.items():
        if job.parent is None:  # seq2seq: trained from scratch, no start to compare
            translation[task] = translation_row(task, job)
        else:
            rows.append(task_row(task, job, args, out))
    print()
    print_translation_goals(translation)
    if rows:
        print_table(rows)
        print_goals(rows)
        print(summary_line(rows))


if __name__ == "__main__":
    main()
