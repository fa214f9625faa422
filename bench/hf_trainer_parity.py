"""Parity with the Hugging Face Trainer: one BERT checkpoint fine-tuned on the same task, rows,
hyperparameters, steps and seed by our trial (lmplatform/tune/trial.py `run_trial`, what a
search runs) and by `transformers.Trainer`, side by side in one process, on the same threads.

    .venv/bin/python bench/hf_trainer_parity.py --registry registry --parent bert-shared-cpu

The parent is a registry version (its folder is a transformers checkpoint: the Trainer side
loads it with `AutoModelFor*.from_pretrained` and `AutoTokenizer`). `bert-shared-cpu` comes
from `make setup && .venv/bin/python jobs/pretrain.py --config
jobs/configs/pretrain/bert-shared-cpu.yaml` (about 20 min); `make demo`'s `bert-sample`
(`--registry <demo registry> --parent bert-sample`) is a quicker stand-in.

Each task comes from its shipped config (jobs/configs/tasks/<task>.yaml): lr, batch size,
warmup, weight decay, precision, max_seq_len, epochs (`--epochs` overrides), with `layer_decay`
1 and no search. Both sides run the same number of optimizer steps (the Trainer's `max_steps` is
set to ours, its loader drops the last partial batch as ours does); the Trainer scores the dev
set as we do (accuracy; entity F1 on first sub-tokens, words past the cut tagged O, with
lmplatform.metrics, which tests hold equal to seqeval). Per task it prints both dev metrics
and our wall time over the Trainer's; the last line is
`<task>_metric_delta=<ours - theirs> <task>_time_ratio=<ours / theirs>` for every task.
Goal (issue 33): within 0.5 point, time ratio <= 0.6 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from lmplatform import console  # noqa: E402

console.setup_process()  # before datasets is imported: no progress bars for its maps

from lmplatform.config import load_config  # noqa: E402
from lmplatform.metrics import entity_report  # noqa: E402
from lmplatform.tune.config import FinetuneJobConfig, TrialParams  # noqa: E402
from lmplatform.tune.data import TaskData, load_task_data  # noqa: E402
from lmplatform.tune.trial import run_trial, steps_per_epoch, total_steps  # noqa: E402

SCALE = 100.0  # metrics printed in points


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", default=str(ROOT / "registry"))
    p.add_argument("--parent", default="bert-shared-cpu")
    p.add_argument("--tasks", default="sst2,conll2003", help="configs under jobs/configs/tasks")
    p.add_argument("--epochs", type=float, default=None, help="default: the task config's")
    p.add_argument("--train-rows", type=int, default=None, help="the first N (default: all)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    return p.parse_args()


def task_data(task: str, args, out: str) -> TaskData:
    overrides = [
        f"parent={args.parent}",
        f"registry={args.registry}",
        f"output_dir={out}",
        "layer_decay=1.0",
        "search.eval_rows=null",  # the whole dev set, on both sides
        "train.eval_every=1000000000",  # one evaluation, at the end
        "train.log_every=100",
    ]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    job = load_config(
        FinetuneJobConfig, ROOT / "jobs" / "configs" / "tasks" / f"{task}.yaml", overrides
    )
    data = load_task_data(job)
    if args.train_rows:
        data.train_rows = data.train_rows[: args.train_rows]
    return data


def ours(data: TaskData) -> tuple[float, float]:
    """Our trial, in-process: (dev metric in points, seconds)."""
    reports: list[dict] = []
    t0 = time.perf_counter()
    run_trial({}, data, lambda m, checkpoint=None: reports.append(m), None, lambda d: None)
    seconds = time.perf_counter() - t0
    return SCALE * reports[-1][data.cfg.task.metric], seconds


def theirs(data: TaskData, folder: Path, steps: int) -> tuple[float, float]:
    """transformers.Trainer on the same rows and hyperparameters: (dev metric, seconds)."""
    import transformers

    transformers.logging.set_verbosity_error()
    job, hp = data.cfg, TrialParams.of(data.cfg)
    ner = job.task.type == "token_classification"
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    auto = (
        transformers.AutoModelForTokenClassification
        if ner
        else transformers.AutoModelForSequenceClassification
    )
    t0 = time.perf_counter()
    model = auto.from_pretrained(folder, num_labels=len(data.label_names))
    encode = _ner_rows if ner else _text_rows
    (train, _), (dev, words) = (
        encode(tok, rows, job.task.max_seq_len) for rows in (data.train_rows, data.dev_rows)
    )
    collator = (
        transformers.DataCollatorForTokenClassification(tok)
        if ner
        else transformers.DataCollatorWithPadding(tok)
    )
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=hp.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=hp.lr,
            weight_decay=hp.weight_decay,
            warmup_steps=int(round(hp.warmup_ratio * steps)),
            lr_scheduler_type="linear",
            optim="adamw_torch_fused",  # ours is torch's fused AdamW too
            max_grad_norm=job.train.clip_grad_norm or 0.0,
            max_steps=steps,
            dataloader_drop_last=True,
            seed=job.train.seed,
            bf16=job.train.precision == "bf16",
            use_cpu=True,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            logging_steps=100,
            disable_tqdm=True,
        )
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=train, data_collator=collator
        )
        trainer.train()
        args.dataloader_drop_last = False  # (for training only, as ours): every dev row scored
        logits = trainer.predict(dev).predictions
    seconds = time.perf_counter() - t0
    score = _ner_score(logits, dev, words, data) if ner else _accuracy(logits, data.dev_rows)
    return SCALE * score, seconds


def _text_rows(tok, rows: list[dict], max_len: int) -> tuple[list[dict], None]:
    texts = [r["text"] for r in rows]
    pairs = [r["text_pair"] for r in rows] if rows and "text_pair" in rows[0] else None
    enc = tok(texts, pairs, truncation=True, max_length=max_len)
    features = [
        {"input_ids": i, "token_type_ids": t, "attention_mask": a, "labels": r["label"]}
        for i, t, a, r in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], rows)
    ]
    return features, None


def _ner_rows(tok, rows: list[dict], max_len: int) -> tuple[list[dict], list[list]]:
    """Words -> sub-tokens, each word's tag on its first sub-token (-100 elsewhere), as
    transformers' run_ner example labels them."""
    enc = tok(
        [r["tokens"] for r in rows], is_split_into_words=True, truncation=True, max_length=max_len
    )
    out = []
    for k, r in enumerate(rows):
        prev, labels = None, []
        for w in enc.word_ids(k):
            labels.append(r["tags"][w] if w is not None and w != prev else -100)
            prev = w
        out.append(
            {
                "input_ids": enc["input_ids"][k],
                "attention_mask": enc["attention_mask"][k],
                "labels": labels,
            }
        )
    return out, [enc.word_ids(k) for k in range(len(rows))]


def _accuracy(logits: np.ndarray, rows: list[dict]) -> float:
    gold = np.array([r["label"] for r in rows])
    return float((logits.argmax(-1) == gold).mean())


def _ner_score(logits: np.ndarray, dev: list[dict], words: list[list], data: TaskData) -> float:
    names = data.label_names
    pred, gold = [], []
    for k, row in enumerate(data.dev_rows):
        tags = ["O"] * len(row["tokens"])  # words past the cut stay O
        for pos, (w, lab) in enumerate(zip(words[k], dev[k]["labels"])):
            if lab != -100:
                tags[w] = names[int(logits[k][pos].argmax())]
        pred.append(tags)
        gold.append([names[t] for t in row["tags"]])
    return entity_report(pred, gold)["entity_f1"]


def warm_up() -> None:
    """What either side pays once per process, paid before either is timed: the Trainer's
    imports (accelerate, ...) and the first fused AdamW (it imports torch's compiler stack),
    so whichever side runs first is not charged for the other's start-up."""
    import transformers  # noqa: F401
    from transformers import Trainer  # noqa: F401

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], fused=True).step()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warm_up()
    from lmplatform.cli.common import require_model
    from lmplatform.registry.store import Registry

    require_model(args.registry, "pretrained", args.parent)  # else: the command that builds it
    reg = Registry(args.registry)
    name, version = reg.resolve("pretrained", args.parent)
    folder = reg.local_path("pretrained", name, version)
    summary = []
    for task in args.tasks.split(","):
        with tempfile.TemporaryDirectory() as out:
            data = task_data(task, args, out)
            hp = TrialParams.of(data.cfg)
            steps = total_steps(
                data.cfg, hp.epochs, steps_per_epoch(len(data.train_rows), hp.batch_size, 1)
            )
            print(
                f"[{task}] {len(data.train_rows)} train rows, {len(data.dev_rows)} dev rows, "
                f"{steps} steps of {hp.batch_size} at lr {hp.lr:g}, {data.cfg.train.precision}, "
                f"{args.threads} threads",
                flush=True,
            )
            m_ours, s_ours = ours(data)
            print(
                f"[{task}] ours: {data.cfg.task.metric} {m_ours:.2f} in {s_ours:.0f} s", flush=True
            )
            m_hf, s_hf = theirs(data, folder, steps)
            print(f"[{task}] transformers.Trainer: {m_hf:.2f} in {s_hf:.0f} s", flush=True)
            summary.append(
                f"{task}_metric_delta={m_ours - m_hf:+.2f} {task}_time_ratio={s_ours / s_hf:.2f}"
            )
    print(" ".join(summary))


if __name__ == "__main__":
    main()
