"""Pretraining examples: built in parallel with Ray Data, written as parquet shards, masked per batch.

- BERT: segment pairs up to `max_seq_len` as in Devlin et al. (2019) — A and B are runs of
  whole sentences, and half of the B segments come from a different document (real
  next-sentence prediction). Masking is *not* stored: `mask_tokens` draws it for every batch, so
  each epoch sees new masks (dynamic masking, Liu et al. 2019).
- GPT / LSTM LM: documents joined with end-of-text and cut into contiguous fixed-length blocks
  (no padding, no wasted compute).

Shards plus a `manifest.json` (tokenizer hash, corpus fingerprint, counts) form one example set;
`build_examples` reuses a complete set built from the same inputs instead of rebuilding it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from lmplatform import storage
from lmplatform.config import StrictModel


class ExamplesConfig(StrictModel):
    max_seq_len: int = Field(128, ge=16, le=65536)
    """Tokens per example, special tokens included."""
    short_seq_prob: float = Field(0.1, ge=0.0, le=1.0)
    """BERT: probability of a shorter target length, so the model also sees short inputs."""
    nsp: bool = True
    """BERT: build sentence pairs with next-sentence labels (false: single segments)."""
    nsp_random_prob: float = Field(0.5, ge=0.0, le=1.0)
    """BERT: fraction of B segments taken from a different document."""
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    """BERT: fraction of maskable tokens selected for prediction (drawn per batch)."""
    whole_word_masking: bool = False
    """BERT: select whole words (all their WordPiece pieces) instead of single pieces."""
    dupe_factor: int = Field(1, ge=1, le=100)
    """BERT: build every document's pairs this many times with different segment cuts and random
    B segments (Google's `dupe_factor`), so repeated epochs over a small corpus see new NSP
    pairs instead of memorising one fixed set."""
    docs_per_batch: int = Field(128, ge=2)
    """Documents per Ray Data batch; B segments are drawn from other documents of the batch."""
    rows_per_shard: int = Field(20000, ge=1)
    """Examples per parquet shard (at least)."""
    seed: int = 0
    """Seed for segment and pair sampling (masking has its own seed at training time)."""


# --------------------------------------------------------------------------- builders (Ray Data)

_SENT = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_sentences(doc: str) -> list[str]:
    """Paragraph lines, then sentence ends; good enough for segment boundaries, never for NLP."""
    out: list[str] = []
    for para in doc.split("\n"):
        out += [s for s in _SENT.split(para.strip()) if s.strip()]
    return out


def _batch_rng(seed: int, texts: list[str]) -> random.Random:
    """Seed from the batch content, so results do not depend on which actor ran which batch."""
    key = hashlib.sha256(f"{seed}|{texts[0][:200]}|{len(texts)}".encode()).digest()
    return random.Random(int.from_bytes(key[:8], "little"))


class BertPairBuilder:
    """Ray Data callable class: a batch of documents -> BERT segment pairs with NSP labels."""

    def __init__(self, tokenizer_json: str, cfg: dict):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)
        self.cfg = ExamplesConfig.model_validate(cfg)
        self.cls = self.tok.token_to_id("[CLS]")
        self.sep = self.tok.token_to_id("[SEP]")
        self._previous: list[list[list[int]]] = []  # documents of the last batch: NSP fallback

    def _encode_docs(self, texts: list[str]) -> list[list[list[int]]]:
        sents = [split_sentences(t) for t in texts]
        flat = [s for doc in sents for s in doc]
        enc = self.tok.encode_batch(flat, add_special_tokens=False) if flat else []
        docs, i = [], 0
        for doc in sents:
            docs.append([e.ids for e in enc[i : i + len(doc)] if e.ids])
            i += len(doc)
        return docs

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        cfg = self.cfg
        rng = _batch_rng(cfg.seed, texts)
        docs = self._encode_docs(texts)
        max_tokens = cfg.max_seq_len - 3 if cfg.nsp else cfg.max_seq_len - 2
        ids_out, types_out, nsp_out = [], [], []
        jobs = [(d, doc) for _ in range(cfg.dupe_factor) for d, doc in enumerate(docs)]
        for d, doc in jobs:
            others = [o for j, o in enumerate(docs) if j != d and o] or self._previous
            for a, b, is_random in self._pairs(doc, others, max_tokens, rng):
                if cfg.nsp:
                    ids = [self.cls, *a, self.sep, *b, self.sep]
                    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
                else:
                    ids = [self.cls, *a, self.sep]
                    types = [0] * len(ids)
                ids_out.append(ids)
                types_out.append(types)
                nsp_out.append(int(is_random) if cfg.nsp else -100)
        self._previous = [d for d in docs if d][-8:]
        if cfg.dupe_factor > 1:  # a document's copies would otherwise sit side by side
            order = list(range(len(ids_out)))
            rng.shuffle(order)
            ids_out = [ids_out[i] for i in order]
            types_out = [types_out[i] for i in order]
            nsp_out = [nsp_out[i] for i in order]
        return pa.table(
            {
                "input_ids": _lists(ids_out, pa.int32()),
                "token_type_ids": _lists(types_out, pa.int8()),
                "next_sentence_label": pa.array(nsp_out, type=pa.int8()),
            }
        )

    def _pairs(
        self,
        doc: list[list[int]],
        others: list[list[list[int]]],
        max_tokens: int,
        rng: random.Random,
    ):
        """Google's create_instances_from_document, with the coin for NSP kept honest.

        The original forces a random B whenever a chunk holds one sentence, which pushes the
        NotNext share above 50 %; here a one-sentence chunk is split inside the sentence instead.
        """
        cfg = self.cfg
        target = _target_length(max_tokens, cfg.short_seq_prob, rng)
        chunk: list[list[int]] = []
        length = 0
        i = 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                if not cfg.nsp:
                    yield [t for s in chunk for t in s][:max_tokens], [], False
                else:
                    pair = self._nsp_pair(chunk, others, target, max_tokens, rng)
                    if pair is None:  # a lone one-token sentence: no pair, and no new target
                        chunk, length, i = [], 0, i + 1
                        continue
                    a, b, is_random, give_back = pair
                    i -= give_back  # the unused sentences of this chunk are not wasted
                    if a and b:
                        yield a, b, is_random
                chunk, length = [], 0
                target = _target_length(max_tokens, cfg.short_seq_prob, rng)
            i += 1

    def _nsp_pair(
        self,
        chunk: list[list[int]],
        others: list[list[list[int]]],
        target: int,
        max_tokens: int,
        rng: random.Random,
    ):
        """A chunk's (A, B, B is random, sentences to give back), or None for a chunk of one
        one-token sentence. A random B leaves the chunk's own B sentences unused: the caller
        goes back to them."""
        if len(chunk) >= 2:
            a_end = rng.randint(1, len(chunk) - 1)
            a_sents, rest = chunk[:a_end], chunk[a_end:]
        else:
            toks = chunk[0]
            if len(toks) < 2:
                return None
            cut = rng.randint(1, len(toks) - 1)
            a_sents, rest = [toks[:cut]], [toks[cut:]]
        a = [t for s in a_sents for t in s]
        is_random = bool(others) and rng.random() < self.cfg.nsp_random_prob
        give_back = 0
        if is_random:
            b = _segment_from(rng.choice(others), max(1, target - len(a)), rng)
            # a sentence split in two cannot be given back, only whole sentences
            give_back = len(rest) if len(chunk) >= 2 else 0
        else:
            b = [t for s in rest for t in s]
        a, b = _truncate_pair(a, b, max_tokens, rng)
        return a, b, is_random, give_back


def _target_length(max_tokens: int, short_seq_prob: float, rng: random.Random) -> int:
    """Tokens a chunk aims for: mostly the most that fit, sometimes fewer, so the model also
    sees short inputs."""
    if rng.random() < short_seq_prob:
        return rng.randint(2, max_tokens)
    return max_tokens


def _segment_from(doc: list[list[int]], target: int, rng: random.Random) -> list[int]:
    """A random B: whole sentences of another document from a random one on, until `target`
    tokens."""
    start = rng.randint(0, len(doc) - 1)
    b: list[int] = []
    for s in doc[start:]:
        b += s
        if len(b) >= target:
            break
    return b


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random):
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        # drop from the front or the back at random, so neither end is systematically favoured
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()
    return a, b


class CausalBlockBuilder:
    """Ray Data callable class: documents -> contiguous blocks of `max_seq_len` token ids."""

    def __init__(self, tokenizer_json: str, cfg: dict):
        from tokenizers import Tokenizer

        from lmplatform.tokenization import EOT

        self.tok = Tokenizer.from_str(tokenizer_json)
        self.cfg = ExamplesConfig.model_validate(cfg)
        self.eot = self.tok.token_to_id(EOT)
        if self.eot is None:
            raise ValueError(f"causal LM examples need a tokenizer with {EOT!r} (a bpe tokenizer)")

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        stream: list[int] = []
        for enc in self.tok.encode_batch(texts, add_special_tokens=False):
            stream += enc.ids
            stream.append(self.eot)
        n = self.cfg.max_seq_len
        # the tail shorter than one block is dropped: at most n-1 tokens per batch of documents
        blocks = [stream[i : i + n] for i in range(0, len(stream) - n + 1, n)]
        return pa.table({"input_ids": _lists(blocks, pa.int32())})


def _lists(rows: list, value_type: pa.DataType) -> pa.Array:
    """Plain Arrow list columns (not Ray's tensor extension), readable by any parquet reader."""
    return pa.array([list(r) for r in rows], type=pa.list_(value_type))


# --------------------------------------------------------------------------- building shards


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


def read_shards(files: list[str], columns: list[str] | None = None):
    """Shards (local paths or URIs) as one Arrow table."""
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        fs, path = storage.arrow_filesystem(f)
        tables.append(pq.read_table(path, columns=columns, filesystem=fs))
    return pa.concat_tables(tables)


def shard_stats(files: list[str], objective: Objective | str) -> dict:
    """Counts read back from the shards (cheap: only the columns needed), and the objective's
    own (BERT: the share of random next sentences)."""
    import pyarrow.compute as pc

    n = tokens = 0
    for f in files:
        t = read_shards([f], columns=["input_ids"])
        n += t.num_rows
        tokens += int(pc.sum(pc.list_value_length(t["input_ids"])).as_py() or 0)
    stats = {"examples": n, "tokens": tokens, "shards": [f.rsplit("/", 1)[-1] for f in files]}
    return {**stats, **objective_of(objective).shard_stats(files)}


def _nsp_stats(files: list[str]) -> dict:
    import pyarrow.compute as pc

    n = random_next = 0
    for f in files:
        t = read_shards([f], columns=["next_sentence_label"])
        n += t.num_rows
        random_next += int(pc.sum(pc.equal(t["next_sentence_label"], 1)).as_py() or 0)
    return {"nsp_random_fraction": round(random_next / n, 4) if n else 0.0}


def _no_stats(files: list[str]) -> dict:
    return {}


# --------------------------------------------------------------------------- dynamic masking


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    *,
    mask_id: int,
    random_low: int,
    vocab_size: int,
    mlm_probability: float = 0.15,
    word_start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking, drawn anew for every batch: select `mlm_probability` of the maskable tokens;
    of those, 80 % become [MASK], 10 % a random token, 10 % stay. Returns (inputs, labels) with
    labels -100 where nothing is predicted.

    `word_start` (bool, same shape) switches to whole-word masking: a word is selected as a unit,
    so every piece of it is predicted together.
    """
    inputs = input_ids.clone()
    shape = inputs.shape
    if word_start is None:
        selected = torch.rand(shape, generator=generator) < mlm_probability
    else:
        # every maskable word start opens a new word id; continuations inherit their word's id
        word_id = torch.cumsum((word_start & maskable).long(), dim=-1)
        draw = torch.rand(shape[0], shape[1] + 1, generator=generator) < mlm_probability
        selected = torch.gather(draw, 1, word_id)
    selected &= maskable
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(shape, generator=generator)
    to_mask = selected & (roll < 0.8)
    to_random = selected & (roll >= 0.8) & (roll < 0.9)
    inputs[to_mask] = mask_id
    n_random = int(to_random.sum())
    if n_random:
        inputs[to_random] = torch.randint(
            random_low, vocab_size, (n_random,), generator=generator, dtype=inputs.dtype
        )
    return inputs, labels


class BertCollator:
    """Pads a batch of BERT examples and draws its masks; used as the loader's `collate_fn`."""

    def __init__(
        self,
        *,
        pad_id: int,
        mask_id: int,
        special_ids: list[int],
        vocab_size: int,
        mlm_probability: float = 0.15,
        continuation: list[bool] | None = None,
        seed: int = 0,
        pad_to_multiple_of: int = 8,
    ):
        self.pad_id, self.mask_id, self.vocab_size = pad_id, mask_id, vocab_size
        self.special = torch.tensor(sorted(special_ids), dtype=torch.long)
        # random replacements never produce special tokens (they are the lowest ids)
        self.random_low = int(max(special_ids)) + 1
        self.mlm_probability = mlm_probability
        self.continuation = (
            torch.tensor(continuation, dtype=torch.bool) if continuation is not None else None
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        rows = list(batch["input_ids"])
        longest = max(len(r) for r in rows)
        length = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(np.asarray(r, dtype=np.int64))
            types[i, : len(r)] = torch.as_tensor(
                np.asarray(batch["token_type_ids"][i], dtype=np.int64)
            )
        attention = torch.zeros_like(ids, dtype=torch.bool)
        for i, r in enumerate(rows):
            attention[i, : len(r)] = True
        maskable = attention & ~torch.isin(ids, self.special)
        word_start = None if self.continuation is None else ~self.continuation[ids]
        inputs, labels = mask_tokens(
            ids,
            maskable,
            mask_id=self.mask_id,
            random_low=self.random_low,
            vocab_size=self.vocab_size,
            mlm_probability=self.mlm_probability,
            word_start=word_start,
            generator=self.generator,
        )
        nsp = np.asarray(batch["next_sentence_label"], dtype=np.int64)
        return {
            "input_ids": inputs,
            "token_type_ids": types,
            # left out where nothing is padded: the model then takes the unmasked attention
            # kernels without asking the device (`layers.padding_mask`)
            **({} if bool(attention.all()) else {"attention_mask": attention}),
            "labels": labels,
            **mlm_targets(labels),
            # left out where no pair has one (`nsp: false`): the model then reports no NSP
            **({"next_sentence_label": torch.as_tensor(nsp)} if (nsp >= 0).any() else {}),
            "original_ids": ids,
        }


def mlm_targets(labels: torch.Tensor, multiple: int = 64) -> dict[str, torch.Tensor]:
    """The predicted tokens as flat positions into the (B*T) batch and their labels, padded to a
    multiple of `multiple` (label -100). Picking them on the host keeps `h[labels != -100]`
    out of the model: on a GPU that boolean index waits for the device every micro-batch
    (its size is data), a gather by these positions does not; the padding keeps the number of
    shapes small for compiled models."""
    flat = labels.flatten()
    positions = torch.nonzero(flat != -100).flatten()
    size = max(multiple, -(-positions.numel() // multiple) * multiple)
    padded = torch.zeros(size, dtype=torch.long)
    padded[: positions.numel()] = positions
    targets = torch.full((size,), -100, dtype=torch.long)
    targets[: positions.numel()] = flat[positions]
    return {"mlm_positions": padded, "mlm_labels": targets}


def bert_collator(tokenizer_json: str, cfg: ExamplesConfig, seed: int) -> BertCollator:
    """BERT's collator for a tokenizer: its special tokens, and word starts for whole-word
    masking."""
    from tokenizers import Tokenizer

    from lmplatform.tokenization import continuation_mask, special_tokens

    tok = Tokenizer.from_str(tokenizer_json)
    sp = special_tokens(tok)
    return BertCollator(
        pad_id=sp.pad,
        mask_id=sp.mask,
        special_ids=sp.all,
        vocab_size=tok.get_vocab_size(),
        mlm_probability=cfg.mlm_probability,
        continuation=continuation_mask(tok) if cfg.whole_word_masking else None,
        seed=seed,
    )


def causal_collate(batch: dict) -> dict[str, torch.Tensor]:
    """Fixed-length blocks stack without padding; the model shifts targets itself."""
    ids = torch.as_tensor(np.stack([np.asarray(r, dtype=np.int64) for r in batch["input_ids"]]))
    return {"input_ids": ids}


def causal_collator(tokenizer_json: str, cfg: ExamplesConfig, seed: int):
    return causal_collate  # nothing is drawn: no tokenizer, no seed


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class Objective:
    """A pretraining objective: how documents become examples and examples a batch, and what
    summarizes a run. A family's table row names its objective; families may share one (GPT
    and the biLM both read causal blocks)."""

    name: str
    """Names its example sets (in their manifest and reuse key) and the run's config."""
    builder: type
    """Ray Data callable class: (tokenizer.json text, examples config dict) -> a batch of
    documents -> an Arrow table of examples."""
    collator: Callable[[str, ExamplesConfig, int], Callable[[dict], dict]]
    """(tokenizer.json text, examples config, seed) -> the loader's `collate_fn`; the same seed
    draws the same masks (evaluation uses a fixed one)."""
    metrics: tuple[str, ...]
    """The metrics that summarize a pretraining run (registry metadata keys), in order."""
    shard_stats: Callable[[list[str]], dict] = _no_stats
    """Its own counts read back from finished shards, for the manifest."""


MLM_NSP = Objective(
    "bert", BertPairBuilder, bert_collator, ("eval_loss", "mlm_acc", "nsp_acc"), _nsp_stats
)
"""BERT: masked LM (masks drawn per batch) and next-sentence prediction on segment pairs."""
CAUSAL_LM = Objective("causal", CausalBlockBuilder, causal_collator, ("eval_loss", "ppl"))
"""Next-token prediction on contiguous blocks (the biLM reads them in both directions)."""


def objective_of(objective: Objective | str) -> Objective:
    """An objective, or one named by its `name` (as stored in manifests and run configs)."""
    if isinstance(objective, Objective):
        return objective
    from lmplatform.models.families import objectives  # the table imports this module

    known = objectives()
    if objective not in known:
        raise ValueError(f"unknown pretraining objective {objective!r} (known: {', '.join(known)})")
    return known[objective]


# --------------------------------------------------------------------------- small runs without Ray


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


class Prefetcher:
    """Runs an iterator in a background thread, `depth` items ahead of the consumer.

    Why: the training thread should never wait for batch assembly (masking, padding) or for
    Ray Data starting the next epoch's stream (~3 s on a laptop). Errors raised by the
    producer surface in the consumer at the item where they happened.
    """

    _END = object()

    def __init__(self, iterable, depth: int = 4):
        import queue
        import threading

        self._q: queue.Queue = queue.Queue(maxsize=depth)

        def run():  # a daemon thread: it ends with the worker process
            try:
                for item in iterable:
                    self._q.put(item)
                self._q.put(self._END)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                self._q.put(e)

        self._thread = threading.Thread(target=run, name="batch-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item
