"""Pretraining examples built with Ray Data: NSP balance, masking statistics, causal blocks."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lmplatform.data.sources import fingerprint
from lmplatform.models.bert.pretraining import BertCollator, mask_tokens
from lmplatform.models.gpt.pretraining import causal_collate
from lmplatform.models.objective import ExamplesConfig
from lmplatform.pretraining.data import build_examples, shard_files
from lmplatform.tokenization import (
    EOT,
    TokenizerConfig,
    continuation_mask,
    load_tokenizer,
    special_tokens,
    train_tokenizer,
)


def _read(out_dir):
    return pq.ParquetDataset(shard_files(out_dir)).read().to_pydict()


@pytest.fixture(scope="module")
def bert_shards(ray_local, wikitext_corpus, wordpiece_8k, tmp_path_factory):
    cfg_corpus, corpus = wikitext_corpus
    out = tmp_path_factory.mktemp("bert") / "examples"
    cfg = ExamplesConfig(max_seq_len=128, rows_per_shard=2000, docs_per_batch=16)
    manifest = build_examples(
        corpus, "bert", wordpiece_8k, cfg, out, fingerprint(cfg_corpus.source)
    )
    return manifest, out, cfg


def test_bert_examples_are_well_formed_pairs(bert_shards, wordpiece_8k):
    manifest, out, cfg = bert_shards
    tok = load_tokenizer(wordpiece_8k)
    sp = special_tokens(tok)
    rows = _read(out)
    n = len(rows["input_ids"])
    assert n == manifest["examples"] > 3000
    assert len(manifest["shards"]) >= 2
    for ids, types in zip(rows["input_ids"][:500], rows["token_type_ids"][:500]):
        assert len(ids) <= cfg.max_seq_len and len(ids) == len(types)
        assert ids[0] == sp.cls and ids[-1] == sp.sep and ids.count(sp.sep) == 2
        cut = ids.index(sp.sep)
        assert set(types[: cut + 1]) == {0} and set(types[cut + 1 :]) == {1}


def test_nsp_labels_are_half_random(bert_shards):
    _, out, _ = bert_shards
    labels = np.asarray(_read(out)["next_sentence_label"])
    frac = (labels == 1).mean()
    print(f"NSP random-next fraction: {frac:.4f} over {len(labels)} examples")
    assert set(np.unique(labels)) == {0, 1}
    assert abs(frac - 0.5) <= 0.02


def test_random_b_segments_come_from_other_documents(bert_shards, wordpiece_8k):
    """IsNext B segments continue A's document: they share far more vocabulary with A."""
    _, out, _ = bert_shards
    rows = _read(out)
    sep = special_tokens(load_tokenizer(wordpiece_8k)).sep

    def overlap(ids):
        cut = ids.index(sep)
        a, b = set(ids[1:cut]), set(ids[cut + 1 : -1])
        return len(a & b) / max(1, len(b))

    by_label = {0: [], 1: []}
    for ids, y in zip(rows["input_ids"], rows["next_sentence_label"]):
        by_label[y].append(overlap(ids))
    assert np.mean(by_label[0]) > np.mean(by_label[1]) + 0.05


def test_masking_statistics(bert_shards, wordpiece_8k):
    _, out, _ = bert_shards
    tok = load_tokenizer(wordpiece_8k)
    sp = special_tokens(tok)
    rows = _read(out)
    collate = BertCollator(
        pad_id=sp.pad, mask_id=sp.mask, special_ids=sp.all, vocab_size=tok.get_vocab_size(), seed=1
    )
    maskable = selected = as_mask = as_random = kept = 0
    for i in range(0, len(rows["input_ids"]), 256):
        batch = {k: v[i : i + 256] for k, v in rows.items()}
        b = collate(batch)
        real = b["attention_mask"] & ~torch.isin(b["original_ids"], torch.tensor(sp.all))
        sel = b["labels"] != -100
        assert not (sel & ~real).any()  # never a special or padding position
        maskable += int(real.sum())
        selected += int(sel.sum())
        as_mask += int((sel & (b["input_ids"] == sp.mask)).sum())
        kept += int((sel & (b["input_ids"] == b["original_ids"])).sum())
        as_random += int(
            (sel & (b["input_ids"] != sp.mask) & (b["input_ids"] != b["original_ids"])).sum()
        )
    frac = selected / maskable
    print(
        f"masked {frac:.4f} of {maskable} maskable tokens; mask/random/keep = {as_mask / selected:.3f}/{as_random / selected:.3f}/{kept / selected:.3f}"
    )
    assert abs(frac - 0.15) <= 0.01
    assert abs(as_mask / selected - 0.8) <= 0.02
    assert abs(as_random / selected - 0.1) <= 0.02
    assert abs(kept / selected - 0.1) <= 0.02


def test_masking_is_dynamic(bert_shards, wordpiece_8k):
    """The same examples get different masks in different batches (nothing fixed at preparation)."""
    _, out, _ = bert_shards
    tok = load_tokenizer(wordpiece_8k)
    sp = special_tokens(tok)
    rows = _read(out)
    batch = {k: v[:64] for k, v in rows.items()}
    collate = BertCollator(
        pad_id=sp.pad, mask_id=sp.mask, special_ids=sp.all, vocab_size=tok.get_vocab_size(), seed=0
    )
    first, second = collate(batch), collate(batch)
    assert torch.equal(first["original_ids"], second["original_ids"])
    assert not torch.equal(first["labels"], second["labels"])


def test_whole_word_masking_masks_every_piece_of_a_word(wordpiece_8k):
    tok = load_tokenizer(wordpiece_8k)
    sp = special_tokens(tok)
    cont = torch.tensor(continuation_mask(tok))
    text = "the unbelievably overcomplicated photosynthesis mechanisms were reinvestigated " * 12
    ids = torch.tensor([tok.encode(text).ids[:120]] * 64)
    assert cont[ids].any()  # the text really has multi-piece words
    maskable = ~torch.isin(ids, torch.tensor(sp.all))
    word_start = ~cont[ids]
    _, labels = mask_tokens(
        ids,
        maskable,
        mask_id=sp.mask,
        random_low=5,
        vocab_size=8000,
        word_start=word_start,
        generator=torch.Generator().manual_seed(0),
    )
    sel = labels != -100
    word_id = torch.cumsum((word_start & maskable).long(), dim=-1)
    for r in range(ids.shape[0]):
        for w in word_id[r][sel[r]].unique():
            in_word = (word_id[r] == w) & maskable[r]
            assert sel[r][in_word].all()  # all pieces selected together
    assert 0.10 < sel.float().sum() / maskable.float().sum() < 0.20


def test_causal_blocks_are_contiguous_and_unpadded(ray_local, sample_dir, tmp_path):
    from lmplatform.data.corpus import CorpusConfig, load_corpus
    from lmplatform.data.sources import DataSource

    corpus_cfg = CorpusConfig(source=DataSource(path=str(sample_dir / "corpus" / "train.txt")))
    corpus = load_corpus(corpus_cfg)
    tok_path = train_tokenizer(
        TokenizerConfig(kind="bpe", vocab_size=2000),
        (b["text"] for b in corpus.iter(batch_size=500)),
        tmp_path,
    )
    tok = load_tokenizer(tok_path)
    eot = tok.token_to_id(EOT)
    cfg = ExamplesConfig(max_seq_len=64, docs_per_batch=100)
    fp = fingerprint(corpus_cfg.source)
    manifest = build_examples(corpus, "causal", tok_path, cfg, tmp_path / "ex", fp)
    rows = _read(tmp_path / "ex")["input_ids"]
    assert all(len(r) == 64 for r in rows)
    stream = [t for r in rows for t in r]
    # blocks cut a batch's token stream in order: the first block of the first batch is the
    # start of the first documents, separators included (batches may land in any order)
    first_docs = [
        enc.ids + [eot] for enc in tok.encode_batch(corpus["text"][:3], add_special_tokens=False)
    ]
    expect = [t for d in first_docs for t in d]
    assert len(expect) > 64 and expect[:64] in rows
    kept = sum(len(r) for r in rows)
    total = sum(len(e.ids) + 1 for e in tok.encode_batch(corpus["text"], add_special_tokens=False))
    assert kept / total > 0.97  # only each batch's final partial block is dropped
    assert stream.count(eot) > len(corpus) * 0.9
    batch = causal_collate({"input_ids": rows[:4]})
    assert batch["input_ids"].shape == (4, 64)
    again = build_examples(corpus, "causal", tok_path, cfg, tmp_path / "ex", fp)
    assert again["reused"] and again["key"] == manifest["key"]
    changed = build_examples(
        corpus, "causal", tok_path, cfg.model_copy(update={"max_seq_len": 32}), tmp_path / "ex", fp
    )
    assert not changed["reused"]
    assert all(len(r) == 32 for r in _read(tmp_path / "ex")["input_ids"])
