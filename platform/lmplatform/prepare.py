"""The data stage of pretraining: corpus -> tokenizer -> example shards, each reused when unchanged.

Every output folder records what it was built from (corpus fingerprint, tokenizer hash, the
resolved config), so a rerun with the same inputs skips the work and says so, and a rerun with
different inputs never mixes old and new artefacts.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from lmplatform.config import atomic_write_text, save_resolved
from lmplatform.data.pretraining import build_examples
from lmplatform.data.sources import fingerprint, load_corpus
from lmplatform.jobconfig import PretrainJobConfig
from lmplatform.tokenization import TokenizerConfig, load_tokenizer, tokenizer_hash, train_tokenizer


@dataclass
class Prepared:
    run_dir: Path
    tokenizer_path: Path
    tokenizer_hash: str
    vocab_size: int
    corpus_fingerprint: str
    examples_dir: Path
    manifest: dict


def _log(msg: str) -> None:
    print(f"[prepare] {msg}", flush=True)


def ensure_tokenizer(cfg: TokenizerConfig, corpus, corpus_fp: str, out_dir: Path) -> Path:
    """Train a tokenizer on the corpus unless one built from the same inputs is already there."""
    key = hashlib.sha256(
        json.dumps([cfg.model_dump(), corpus_fp], sort_keys=True).encode()
    ).hexdigest()[:16]
    meta_path = out_dir / "tokenizer_meta.json"
    path = out_dir / "tokenizer.json"
    if (
        meta_path.is_file()
        and path.is_file()
        and json.loads(meta_path.read_text()).get("key") == key
    ):
        _log(f"tokenizer: reusing {path} (same config and corpus)")
        return path
    t0 = time.time()
    n_docs = len(corpus) if cfg.max_documents is None else min(cfg.max_documents, len(corpus))
    docs = corpus.select(range(n_docs)) if n_docs < len(corpus) else corpus
    # streamed from the Arrow file in batches; the corpus is never held as a Python list
    batches = (b["text"] for b in docs.iter(batch_size=1000))
    train_tokenizer(cfg, batches, out_dir, length=n_docs)
    tok_hash = tokenizer_hash(path)
    meta = {
        "key": key,
        "hash": tok_hash,
        "corpus_fingerprint": corpus_fp,
        "documents": n_docs,
        "config": cfg.model_dump(),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    _log(
        f"tokenizer: trained {cfg.kind} (vocab {load_tokenizer(path).get_vocab_size()}) on {n_docs} documents in {time.time() - t0:.1f}s -> {path} [{tok_hash}]"
    )
    return path


def prepare(cfg: PretrainJobConfig) -> Prepared:
    run_dir = Path(cfg.output_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, run_dir)
    t0 = time.time()
    corpus = load_corpus(cfg.corpus)
    corpus_fp = fingerprint(cfg.corpus.source)
    _log(
        f"corpus: {len(corpus)} documents from {cfg.corpus.source.describe()} [{corpus_fp}] in {time.time() - t0:.1f}s"
    )
    tok_path = ensure_tokenizer(cfg.tokenizer, corpus, corpus_fp, run_dir / "tokenizer")
    tok_hash = tokenizer_hash(tok_path)
    t1 = time.time()
    manifest = build_examples(
        corpus, cfg.objective, tok_path, cfg.examples, run_dir / "examples", corpus_fp
    )
    verb = "reusing" if manifest.get("reused") else f"built in {time.time() - t1:.1f}s:"
    extra = (
        f", NSP random {manifest['nsp_random_fraction']:.1%}"
        if "nsp_random_fraction" in manifest
        else ""
    )
    _log(
        f"examples: {verb} {manifest['examples']} {cfg.objective} examples, {manifest['tokens']} tokens, "
        f"{len(manifest['shards'])} shard(s){extra} -> {run_dir / 'examples'}"
    )
    return Prepared(
        run_dir=run_dir,
        tokenizer_path=tok_path,
        tokenizer_hash=tok_hash,
        vocab_size=load_tokenizer(tok_path).get_vocab_size(),
        corpus_fingerprint=corpus_fp,
        examples_dir=run_dir / "examples",
        manifest=manifest,
    )
