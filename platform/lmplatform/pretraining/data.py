"""Pretraining examples at scale: built in parallel with Ray Data, written as parquet shards.

A family's `Objective` (models/objective.py, named by its table row) says how documents become
examples and examples a batch; this module runs it over a corpus. Shards plus a
`manifest.json` (tokenizer hash, corpus fingerprint, counts) form one example set;
`build_examples` reuses a complete set built from the same inputs instead of rebuilding it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from lmplatform import storage
from lmplatform.models.families import objective_of
from lmplatform.models.objective import ExamplesConfig, Objective


def examples_key(
    objective: Objective | str, tokenizer_hash: str, corpus_fp: str, cfg: ExamplesConfig
) -> str:
    """Identity of an example set: same inputs -> same key -> the existing shards are reused."""
    payload = json.dumps(
        {
            "objective": objective_of(objective).name,
            "tokenizer": tokenizer_hash,
            "corpus": corpus_fp,
            "cfg": cfg.model_dump(exclude={"mlm_probability", "whole_word_masking"}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    p = storage.join(out_dir, "manifest.json")
    return storage.read_json(p) if storage.exists(p) else None


def _examples_dataset(corpus, objective: Objective, tok_json: str, cfg: ExamplesConfig, num_actors):
    """The Ray Data pipeline from documents to examples: one block per batch of documents, so
    every builder actor gets work and shards can be cut evenly."""
    import ray
    import ray.data

    builder = objective.builder
    cpus = int(ray.available_resources().get("CPU", 1)) or 1
    batches = (len(corpus) + cfg.docs_per_batch - 1) // cfg.docs_per_batch
    # from_arrow, not from_huggingface: that one first asks the Hugging Face Hub whether the
    # dataset is a public one it could stream (`load_dataset("generator")`: ~25 s of retries
    # on a node without internet, every fresh cache)
    source = ray.data.from_arrow(
        corpus.with_format("arrow")[:], override_num_blocks=min(batches, 4096)
    )
    return source.map_batches(
        builder,
        fn_constructor_kwargs={"tokenizer_json": tok_json, "cfg": cfg.model_dump()},
        batch_size=cfg.docs_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors or max(1, min(cpus, batches))),
    )


def build_examples(
    corpus,
    objective: Objective | str,
    tokenizer_path: str | os.PathLike,
    cfg: ExamplesConfig,
    out_dir: str | os.PathLike,
    corpus_fp: str,
    num_actors: int | None = None,
) -> dict:
    """Build (or reuse) an example set from a `datasets.Dataset` of documents; returns its manifest.

    `out_dir` is a local folder or a URI. Shards go to a fresh sub-folder and `manifest.json`,
    which names them, is written last: a crash never leaves a half-written set that a later run
    would mistake for a finished one, on a disk or an object store (which cannot rename).
    """
    from lmplatform.tokenization import tokenizer_hash

    objective = objective_of(objective)
    out = storage.normalize(out_dir)
    tok_json = Path(tokenizer_path).read_text()
    tok_hash = tokenizer_hash(tokenizer_path)
    key = examples_key(objective, tok_hash, corpus_fp, cfg)
    existing = read_manifest(out)
    if existing and existing.get("key") == key and existing.get("folder"):
        existing["reused"] = True
        return existing

    t0 = time.time()
    ds = _examples_dataset(corpus, objective, tok_json, cfg, num_actors)
    folder = storage.unique_name("shards-")
    target = storage.join(out, folder)
    fs, path = storage.arrow_filesystem(target)
    try:
        ds.write_parquet(path, filesystem=fs, min_rows_per_file=cfg.rows_per_shard)
        files = sorted(f for f in storage.find(target) if f.endswith(".parquet"))
        stats = shard_stats([storage.join(target, f) for f in files], objective)
    except BaseException:
        storage.remove(target)
        raise
    manifest = {
        "key": key,
        "objective": objective.name,
        "tokenizer_hash": tok_hash,
        "corpus_fingerprint": corpus_fp,
        "documents": len(corpus),
        "config": cfg.model_dump(),
        "seconds": round(time.time() - t0, 2),
        "folder": folder,
        **stats,
    }
    storage.write_json(storage.join(out, "manifest.json"), manifest)  # last: the set is complete
    for old in storage.listdir(out):  # sets built from other inputs
        if old.startswith("shards-") and old != folder:
            storage.remove(storage.join(out, old))
    manifest["reused"] = False
    return manifest


def shard_files(out_dir: str | os.PathLike) -> list[str]:
    """The shards of a finished example set (local paths or URIs), in order."""
    manifest = read_manifest(out_dir)
    if not manifest or not manifest.get("folder"):
        raise FileNotFoundError(f"{out_dir}: no finished example set (no manifest.json)")
    return [storage.join(out_dir, manifest["folder"], f) for f in manifest["shards"]]


def shard_stats(files: list[str], objective: Objective | str) -> dict:
    """Counts read back from the shards (cheap: only the columns needed), and the objective's
    own (BERT: the share of random next sentences)."""
    import pyarrow.compute as pc

    n = tokens = 0
    for f in files:
        t = storage.read_parquet([f], columns=["input_ids"])
        n += t.num_rows
        tokens += int(pc.sum(pc.list_value_length(t["input_ids"])).as_py() or 0)
    stats = {"examples": n, "tokens": tokens, "shards": [f.rsplit("/", 1)[-1] for f in files]}
    return {**stats, **objective_of(objective).shard_stats(files)}


def build_examples_local(
    texts: list[str], objective: Objective | str, tokenizer_json: str, cfg: ExamplesConfig
) -> dict[str, list]:
    """The same builders in this process, for tests and notebooks (no Ray, no shards)."""
    builder = objective_of(objective).builder(tokenizer_json, cfg.model_dump())
    tables = [
        builder({"text": texts[i : i + cfg.docs_per_batch]})
        for i in range(0, len(texts), cfg.docs_per_batch)
    ]
    return pa.concat_tables(tables).to_pydict()


def batch_iterator(
    rows: dict[str, list], batch_size: int, collate, seed: int = 0, epochs: int | None = None
):
    """Shuffled batches of `rows` (a column dict), reshuffled every epoch, collated."""
    n = len(next(iter(rows.values())))
    rng = np.random.default_rng(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield collate({k: [v[j] for j in idx] for k, v in rows.items()})
        epoch += 1
