"""Tokenizers trained on the real corpus: compression, round trips, content hashes."""

import random
import re

from lmplatform.tokenization import (
    EOT,
    TokenizerConfig,
    continuation_mask,
    load_tokenizer,
    special_tokens,
    tokenizer_hash,
    train_tokenizer,
)


def _norm(s: str) -> str:
    return re.sub(r"\s+", "", s).lower()


def test_wordpiece_8k_compresses_wikitext_test(wordpiece_8k, shared_data):
    tok = load_tokenizer(wordpiece_8k)
    assert tok.get_vocab_size() == 8000
    lines = [
        ln
        for ln in (shared_data / "corpus" / "wikitext-2-test.txt").read_text().splitlines()
        if ln.strip()
    ]
    words = sum(len(ln.split()) for ln in lines)
    tokens = sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
    ratio = tokens / words
    print(f"wordpiece-8k tokens per whitespace word on wikitext-2-test: {ratio:.3f}")
    assert ratio <= 1.45


def test_wordpiece_round_trips_1000_lines(wordpiece_8k, shared_data):
    tok = load_tokenizer(wordpiece_8k)
    lines = [
        ln
        for ln in (shared_data / "corpus" / "wikitext-2-test.txt").read_text().splitlines()
        if ln.strip()
    ]
    sample = random.Random(0).sample(lines, 1000)
    bad = [ln for ln in sample if _norm(tok.decode(tok.encode(ln).ids)) != _norm(ln)]
    assert not bad, bad[:3]


def test_wordpiece_specials_and_pair_template(wordpiece_8k):
    tok = load_tokenizer(wordpiece_8k)
    sp = special_tokens(tok)
    assert [sp.pad, sp.unk, sp.cls, sp.sep, sp.mask] == [0, 1, 2, 3, 4]
    enc = tok.encode("the cat sat", "on the mat")
    assert enc.ids[0] == sp.cls and enc.ids.count(sp.sep) == 2
    assert enc.type_ids[-1] == 1 and enc.type_ids[0] == 0
    cont = continuation_mask(tok)
    assert any(cont) and not cont[sp.cls]


def test_bpe_is_lossless_and_has_end_of_text(tmp_path, shared_data):
    text = (shared_data / "corpus" / "wikitext-2-valid.txt").read_text().splitlines()
    path = train_tokenizer(
        TokenizerConfig(kind="bpe", vocab_size=2000),
        iter([text[i : i + 500] for i in range(0, len(text), 500)]),
        tmp_path,
    )
    tok = load_tokenizer(path)
    assert tok.token_to_id(EOT) is not None
    assert special_tokens(tok).pad == tok.token_to_id(EOT)
    for line in text[:300]:
        assert tok.decode(tok.encode(line).ids) == line  # byte-level BPE: exact


def test_hash_identifies_content_not_path(tmp_path, wordpiece_8k):
    h = tokenizer_hash(wordpiece_8k)
    copy = tmp_path / "elsewhere" / "tokenizer.json"
    copy.parent.mkdir()
    copy.write_text(wordpiece_8k.read_text())
    assert tokenizer_hash(copy) == h == tokenizer_hash(load_tokenizer(wordpiece_8k))
    other = train_tokenizer(
        TokenizerConfig(kind="wordpiece", vocab_size=500),
        iter([["a small corpus of words"] * 50]),
        tmp_path,
    )
    assert tokenizer_hash(other) != h
