"""What every trial of a search needs, resolved once on the driver and shipped by Tune: the
parent model (registry reference, config, tokenizer), the task's validated rows and labels.
A seq2seq task from scratch has no parent: its joint tokenizer is trained here, over both sides
of the training pairs, and its model config is the job's with the tokenizer's vocabulary and
ids; a warm-started one takes the parent's tokenizer and the architecture its weights fit."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmplatform.registry.store import Registry
from lmplatform.tasks import task_type
from lmplatform.tasks.data import LabelledData, data_report, describe_report, load_labelled
from lmplatform.tune.config import FinetuneJobConfig


@dataclass
class TaskData:
    """Everything a trial needs, resolved once on the driver and shipped by Tune."""

    job: dict
    registry: Registry  # by its absolute URI, trials on other nodes fetch the parent themselves
    parent_ref: str  # "name@version", "random:name@version", or "scratch" (seq2seq)
    model_config: dict  # parent's model config (architecture for random init)
    tokenizer_json: str
    tokenizer_hash: str
    label_names: list[str]  # the head's outputs: classes, IOB2 tags, O + roles
    classes: list[str]  # what per-class scores are keyed by: classes, entity types, roles
    train_rows: list[dict]
    dev_rows: list[dict]
    fingerprints: dict = field(default_factory=dict)
    data_report: dict = field(default_factory=dict)
    """data_report.json: per split, rows read and dropped, labels, token lengths, truncation."""

    @property
    def cfg(self) -> FinetuneJobConfig:
        return FinetuneJobConfig.model_validate(self.job)


def load_task_data(job: FinetuneJobConfig) -> TaskData:
    """Resolve the parent model in the registry and read and validate the task's data."""
    from lmplatform.models.io import read_config
    from lmplatform.registry.hub import resolve_pretrained

    if task_type(job.task.type).whole_model:
        return _seq2seq_task_data(job)
    reg = job.registry
    random_init = job.parent.startswith("random:")
    ref = job.parent.removeprefix("random:")
    name, version = resolve_pretrained(reg, ref)  # an hf: checkpoint is imported first
    path = reg.local_path("pretrained", name, version)
    meta = reg.metadata("pretrained", name, version)
    cfg = read_config(path)
    rows = read_task_rows(job)
    tokenizer_json = (path / "tokenizer.json").read_text()
    return TaskData(
        job=job.model_dump(mode="json"),
        registry=reg,
        parent_ref=("random:" if random_init else "") + f"{name}@{version}",
        model_config=cfg["model"],
        tokenizer_json=tokenizer_json,
        tokenizer_hash=meta.get("lineage", {}).get("tokenizer_hash", ""),
        label_names=rows.label_names,
        classes=rows.classes,
        train_rows=rows.train_rows,
        dev_rows=rows.dev_rows,
        fingerprints={"train": rows.train.fingerprint, "dev": rows.dev.fingerprint},
        data_report=_data_report(job, rows.train, rows.dev, tokenizer_json, rows.label_names),
    )


@dataclass
class TaskRows:
    """A classification, NER or SRL task's validated rows as its trials train on them."""

    train: LabelledData
    dev: LabelledData
    train_rows: list[dict]
    """At most `task.max_train_rows` of the training rows (a fixed draw)."""
    dev_rows: list[dict]
    label_names: list[str]
    classes: list[str]


def read_task_rows(job: FinetuneJobConfig) -> TaskRows:
    """Read and validate the task's files (no parent needed: what a baseline fits on)."""
    t = job.task
    train = load_labelled(t.train, t.type, t.labels, t.max_bad_fraction, t.labels_are_indices)
    dev = load_labelled(t.dev, t.type, train.labels, t.max_bad_fraction, t.labels_are_indices)
    tt = task_type(t.type)
    return TaskRows(
        train=train,
        dev=dev,
        train_rows=_subset(train.dataset.to_list(), t.max_train_rows),
        dev_rows=dev.dataset.to_list(),
        label_names=tt.outputs(train.labels, t.label_names),
        classes=tt.classes(train.labels, t.label_names),
    )


def _seq2seq_task_data(job: FinetuneJobConfig) -> TaskData:
    """seq2seq: rows first; then, from scratch, a joint tokenizer trained over their source and
    target sides and the job's model with its vocabulary and ids, or, warm-started, the
    parent's tokenizer and the encoder-decoder its weights fit."""
    from tokenizers import Tokenizer

    from lmplatform.tokenization import special_tokens, tokenizer_hash

    t = job.task
    tt = task_type(t.type)
    train = load_labelled(t.train, t.type, None, t.max_bad_fraction)
    dev = load_labelled(t.dev, t.type, None, t.max_bad_fraction)
    rows = _subset(train.dataset.to_list(), t.max_train_rows)
    if job.parent is None:
        parent_ref, tokenizer_json = "scratch", _joint_tokenizer(job, rows)
        tok = Tokenizer.from_str(tokenizer_json)
        sp = special_tokens(tok)
        model = job.model.model_copy(
            update=dict(
                vocab_size=tok.get_vocab_size(),
                pad_token_id=sp.pad,
                bos_token_id=sp.bos,
                eos_token_id=sp.eos,
            )
        )
    else:
        parent_ref, tokenizer_json, model, part = _warm_start_parent(job)
        job = job.model_copy(update={"warm_start": part})
        tok = Tokenizer.from_str(tokenizer_json)
    return TaskData(
        job=job.model_dump(mode="json"),
        registry=job.registry,
        parent_ref=parent_ref,
        model_config=model.model_dump(mode="json"),
        tokenizer_json=tokenizer_json,
        tokenizer_hash=tokenizer_hash(tok),
        label_names=tt.outputs([], None),
        classes=tt.classes([], None),
        train_rows=rows,
        dev_rows=dev.dataset.to_list(),
        fingerprints={"train": train.fingerprint, "dev": dev.fingerprint},
        data_report=_data_report(job, train, dev, tokenizer_json, []),
    )


def _data_report(job: FinetuneJobConfig, train, dev, tokenizer_json: str, outputs) -> dict:
    """Both splits' data reports, printed one line each as well."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tt, t = task_type(job.task.type), job.task
    out = {}
    for split, part in (("train", train), ("dev", dev)):
        out[split] = data_report(part, tt, tok, t.max_seq_len, outputs)
        print(describe_report(split, out[split]), flush=True)
    if t.max_train_rows is not None:
        out["train"]["rows_trained_on"] = min(t.max_train_rows, len(train.dataset))
    return out


def _joint_tokenizer(job: FinetuneJobConfig, rows: list[dict]) -> str:
    import tempfile

    from lmplatform.tokenization import train_tokenizer

    texts = [r["source"] for r in rows] + [r["target"] for r in rows]
    with tempfile.TemporaryDirectory() as d:
        path = train_tokenizer(
            job.tokenizer, (texts[i : i + 1000] for i in range(0, len(texts), 1000)), d
        )
        return path.read_text()


def _warm_start_parent(job: FinetuneJobConfig):
    """(parent ref, its tokenizer, the encoder-decoder its weights fit, the part to fill),
    checked here on the driver so that a parent that cannot warm-start fails before any trial."""
    from tokenizers import Tokenizer

    from lmplatform.models.io import model_config, read_config
    from lmplatform.models.warm_start import check_part, warm_start_config
    from lmplatform.registry.hub import resolve_pretrained
    from lmplatform.tokenization import special_tokens

    reg = job.registry
    name, version = resolve_pretrained(reg, job.parent)
    path = reg.local_path("pretrained", name, version)
    parent = model_config(read_config(path))
    where = f"parent {name}@{version}"
    part = check_part(parent, job.warm_start, where)
    tokenizer_json = (path / "tokenizer.json").read_text()
    sp = special_tokens(Tokenizer.from_str(tokenizer_json))
    if job.task.max_seq_len > parent.max_seq_len:
        raise ValueError(
            f"task.max_seq_len={job.task.max_seq_len} exceeds {where}'s max_seq_len="
            f"{parent.max_seq_len} (its learned positions)"
        )
    model = warm_start_config(parent, sp.pad, sp.bos, sp.eos)
    return f"{name}@{version}", tokenizer_json, model, part


def _subset(rows: list[dict], cap: int | None) -> list[dict]:
    if cap is None or cap >= len(rows):
        return rows
    keep = np.random.default_rng(0).permutation(len(rows))[:cap]
    return [rows[i] for i in sorted(keep)]


def eval_subset(data: TaskData) -> list[dict]:
    return _subset(data.dev_rows, data.cfg.search.eval_rows)
