"""The data stage of pretraining: corpus -> tokenizer -> example shards, each reused when unchanged.

Every output folder records what it was built from (corpus fingerprint, tokenizer hash, the
resolved config), so a rerun with the same inputs skips the work and says so, and a rerun with
different inputs never mixes old and new artefacts.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lmplatform import storage
from lmplatform.config import save_resolved
from lmplatform.data.corpus import read_corpus
from lmplatform.data.sources import fingerprint
from lmplatform.pretraining.config import PretrainJobConfig
from lmplatform.pretraining.data import build_examples
from lmplatform.tokenization import TokenizerConfig, load_tokenizer, tokenizer_hash, train_tokenizer


@dataclass
class Prepared:
    run_dir: str
    """The run's folder: a local path or a URI (output_dir/<name>)."""
    tokenizer_uri: str
    tokenizer_path: Path
    """A local copy of tokenizer.json (the same bytes as `tokenizer_uri`)."""
    tokenizer_hash: str
    vocab_size: int
    corpus_fingerprint: str
    examples_dir: str
    manifest: dict
    init_from: str | None = None
    """'name@version' of the registered model whose weights start the run (continued pretraining)."""


def _log(msg: str) -> None:
    print(f"[prepare] {msg}", flush=True)


def ensure_tokenizer(cfg: TokenizerConfig, corpus, corpus_fp: str, out_dir: str) -> str:
    """Train a tokenizer on the corpus unless one built from the same inputs is already there.
    `out_dir` is a local folder or a URI; returns where tokenizer.json is."""
    key = hashlib.sha256(
        json.dumps([cfg.model_dump(), corpus_fp], sort_keys=True).encode()
    ).hexdigest()[:16]
    meta_path = storage.join(out_dir, "tokenizer_meta.json")
    path = storage.join(out_dir, "tokenizer.json")
    if (
        storage.exists(meta_path)
        and storage.exists(path)
        and storage.read_json(meta_path).get("key") == key
    ):
        _log(f"tokenizer: reusing {path} (same config and corpus)")
        return path
    t0 = time.time()
    n_docs = len(corpus) if cfg.max_documents is None else min(cfg.max_documents, len(corpus))
    docs = corpus.select(range(n_docs)) if n_docs < len(corpus) else corpus
    # streamed from the Arrow file in batches; the corpus is never held as a Python list
    batches = (b["text"] for b in docs.iter(batch_size=1000))
    with tempfile.TemporaryDirectory() as td:
        local = train_tokenizer(cfg, batches, td, length=n_docs)
        tok_hash = tokenizer_hash(local)
        vocab = load_tokenizer(local).get_vocab_size()
        storage.upload(local, path)
    meta = {
        "key": key,
        "hash": tok_hash,
        "corpus_fingerprint": corpus_fp,
        "documents": n_docs,
        "config": cfg.model_dump(),
    }
    storage.write_json(meta_path, meta)  # last: the tokenizer beside it is complete
    _log(
        f"tokenizer: trained {cfg.kind} (vocab {vocab}) on {n_docs} documents in {time.time() - t0:.1f}s -> {path} [{tok_hash}]"
    )
    return path


def resolve_init(cfg: PretrainJobConfig) -> tuple[str, Path]:
    """The model `init_from` names: ('name@version', its local folder), after checking that
    the job's `model` section describes its architecture (weights of another shape cannot
    load; a silent override would train something else than the config says)."""
    from lmplatform.config import ConfigError
    from lmplatform.models.io import read_config
    from lmplatform.registry.hub import resolve_pretrained

    reg = cfg.registry
    name, version = resolve_pretrained(reg, cfg.init_from)
    path = reg.local_path("pretrained", name, version)
    theirs = read_config(path)["model"]
    diff = model_mismatch(cfg.model.model_dump(), theirs)
    if diff:
        raise ConfigError(
            f"init_from={name}@{version}: the model section does not describe that model: "
            + ", ".join(diff)
        )
    return f"{name}@{version}", path


def model_mismatch(ours: dict, theirs: dict) -> list[str]:
    """Where a continued run's `model` section differs from its parent's ('key=ours (it has
    theirs)'): weights of another shape cannot load."""
    # vocab: from its tokenizer; size: a preset name (the fields it fills are compared);
    # ELECTRA's generator is not in the folder (it starts afresh) and its loss weight shapes
    # no weight: neither needs to match
    free = {"dropout", "attention_dropout", "vocab_size", "size"}
    free |= {"generator_fraction", "discriminator_weight"}
    return [
        f"{k}={ours.get(k)!r} (it has {v!r})"
        for k, v in theirs.items()
        if k not in free and ours.get(k) != v
    ]


def adopt_tokenizer(src: Path, ref: str, out_dir: str) -> str:
    """Continued pretraining keeps the parent's vocabulary: its tokenizer.json is the run's."""
    path = storage.join(out_dir, "tokenizer.json")
    storage.write_bytes(path, src.read_bytes())
    storage.write_json(storage.join(out_dir, "tokenizer_meta.json"), {"init_from": ref})
    _log(f"tokenizer: {ref}'s ({tokenizer_hash(src)}) -> {path}")
    return path


def local_tokenizer(uri: str) -> Path:
    """A local copy of a tokenizer.json anywhere, cached by content (so never stale)."""
    data = storage.read_bytes(uri)
    local = storage.cache_root() / "tokenizers" / f"{hashlib.sha256(data).hexdigest()[:16]}.json"
    if not local.is_file():
        storage.write_bytes(str(local), data)
    return local


def prepare(cfg: PretrainJobConfig) -> Prepared:
    run_dir = storage.join(cfg.output_dir, cfg.name)
    save_resolved(cfg, run_dir)
    t0 = time.time()
    read = read_corpus(cfg.corpus)
    corpus = read.dataset
    storage.write_json(storage.join(run_dir, "data_report.json"), read.data_report())
    corpus_fp = fingerprint(cfg.corpus.source)
    _log(
        f"corpus: {len(corpus)} documents from {cfg.corpus.source.describe()} [{corpus_fp}] in "
        f"{time.time() - t0:.1f}s; {read.report.total} records read, {read.report.bad} dropped "
        f"(unreadable) -> {run_dir}/data_report.json"
    )
    init_from = None
    if cfg.init_from:
        init_from, init_path = resolve_init(cfg)
        tok_uri = adopt_tokenizer(
            init_path / "tokenizer.json", init_from, storage.join(run_dir, "tokenizer")
        )
    else:
        tok_uri = ensure_tokenizer(
            cfg.tokenizer, corpus, corpus_fp, storage.join(run_dir, "tokenizer")
        )
    tok_path = local_tokenizer(tok_uri)
    tok_hash = tokenizer_hash(tok_path)
    examples_dir = storage.join(run_dir, "examples")
    t1 = time.time()
    manifest = build_examples(
        corpus, cfg.objective, tok_path, cfg.examples, examples_dir, corpus_fp
    )
    verb = "reusing" if manifest.get("reused") else f"built in {time.time() - t1:.1f}s:"
    extra = (
        f", NSP random {manifest['nsp_random_fraction']:.1%}"
        if "nsp_random_fraction" in manifest
        else ""
    )
    _log(
        f"examples: {verb} {manifest['examples']} {cfg.objective.name} examples, {manifest['tokens']} tokens, "
        f"{len(manifest['shards'])} shard(s){extra} -> {examples_dir}"
    )
    return Prepared(
        run_dir=run_dir,
        tokenizer_uri=tok_uri,
        tokenizer_path=tok_path,
        tokenizer_hash=tok_hash,
        vocab_size=load_tokenizer(tok_path).get_vocab_size(),
        corpus_fingerprint=corpus_fp,
        examples_dir=examples_dir,
        manifest=manifest,
        init_from=init_from,
    )
