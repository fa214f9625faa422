"""What every trial of a search needs, resolved once on the driver and shipped by Tune: the
parent model (registry reference, config, tokenizer), the task's validated rows and labels.
A seq2seq task has no parent: its joint tokenizer is trained here, over both sides of the
training pairs, and its model config is the job's with the tokenizer's vocabulary and ids."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmplatform.jobconfig import FinetuneJobConfig
from lmplatform.tasks import task_type
from lmplatform.tasks.data import load_labelled


@dataclass
class TaskData:
    """Everything a trial needs, resolved once on the driver and shipped by Tune."""

    job: dict
    registry: str  # absolute URI: trials on other nodes fetch the parent from it themselves
    parent_ref: str  # "name@version", "random:name@version", or "scratch" (seq2seq)
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

    if job.parent is None:
        return _scratch_task_data(job)
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


def _scratch_task_data(job: FinetuneJobConfig) -> TaskData:
    """seq2seq: rows first, then a joint tokenizer over their source and target sides."""
    import tempfile

    from tokenizers import Tokenizer

    from lmplatform.registry import Registry
    from lmplatform.tokenization import special_tokens, tokenizer_hash, train_tokenizer

    t = job.task
    tt = task_type(t.type)
    train = load_labelled(t.train, t.type, None, t.max_bad_fraction)
    dev = load_labelled(t.dev, t.type, None, t.max_bad_fraction)
    rows = _subset(train.dataset.to_list(), t.max_train_rows)
    texts = [r["source"] for r in rows] + [r["target"] for r in rows]
    with tempfile.TemporaryDirectory() as d:
        path = train_tokenizer(
            job.tokenizer, (texts[i : i + 1000] for i in range(0, len(texts), 1000)), d
        )
        tokenizer_json = path.read_text()
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
    return TaskData(
        job=job.model_dump(mode="json"),
        registry=Registry(job.registry).uri,
        parent_ref="scratch",
        model_config=model.model_dump(mode="json"),
        tokenizer_json=tokenizer_json,
        tokenizer_hash=tokenizer_hash(tok),
        label_names=tt.outputs([], None),
        classes=tt.classes([], None),
        train_rows=rows,
        dev_rows=dev.dataset.to_list(),
        fingerprints={"train": train.fingerprint, "dev": dev.fingerprint},
    )


def _subset(rows: list[dict], cap: int | None) -> list[dict]:
    if cap is None or cap >= len(rows):
        return rows
    keep = np.random.default_rng(0).permutation(len(rows))[:cap]
    return [rows[i] for i in sorted(keep)]


def eval_subset(data: TaskData) -> list[dict]:
    return _subset(data.dev_rows, data.cfg.search.eval_rows)
