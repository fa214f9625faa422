"""Tokenizers trained with the `tokenizers` library: WordPiece for BERT, byte-level BPE for GPT/LSTM,
and a joint byte-level BPE over both languages for translation (with <pad>, <s>, </s>).

A tokenizer is one `tokenizer.json`; its content hash (`tokenizer_hash`) identifies it and is
recorded by every shard set and model built on it, so nothing is ever paired with the wrong
vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from lmplatform.config import StrictModel, atomic_write_text

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EOT = "<|endoftext|>"
SEQ2SEQ_SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2: padding, decoder start, end


class TokenizerConfig(StrictModel):
    kind: Literal["wordpiece", "bpe", "joint_bpe"] = "wordpiece"
    """WordPiece (BERT), byte-level BPE (GPT, LSTM LM), or byte-level BPE with <pad>, <s>, </s>
    trained over both sides of parallel text (encoder-decoders: one vocabulary, shared
    embeddings). Byte-level BPE keeps case and every character, so outputs detokenize exactly."""
    vocab_size: int = Field(8000, ge=300, le=1_000_000)
    """Size of the learned vocabulary, special tokens included."""
    min_frequency: int = Field(2, ge=1)
    """A merge / word piece must occur this often to enter the vocabulary."""
    lowercase: bool = True
    """WordPiece only: lower-case text before tokenizing (BERT 'uncased')."""
    max_documents: int | None = Field(None, ge=1)
    """Train on at most this many documents of the corpus (None: all of them)."""


@dataclass(frozen=True)
class SpecialTokens:
    """Ids a model or collator needs; GPT-style tokenizers pad with end-of-text."""

    pad: int
    unk: int | None
    cls: int | None
    sep: int | None
    mask: int | None
    eot: int | None
    bos: int | None = None
    eos: int | None = None

    @property
    def all(self) -> list[int]:
        return sorted(
            {
                i
                for i in (
                    self.pad,
                    self.unk,
                    self.cls,
                    self.sep,
                    self.mask,
                    self.eot,
                    self.bos,
                    self.eos,
                )
                if i is not None
            }
        )


# the trainers' progress bar redraws in a terminal; in a job's log it is only blank lines
_SHOW_PROGRESS = sys.stderr.isatty()


def _new_tokenizer(cfg: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    if cfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=False: keep "café" decodable as "café" even when lower-casing
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=cfg.lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=BERT_SPECIALS,
            continuing_subword_prefix="##",
            show_progress=_SHOW_PROGRESS,
        )
        return tok, trainer
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets on the raw text, which NER serving maps back to characters
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=SEQ2SEQ_SPECIALS if cfg.kind == "joint_bpe" else [EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=_SHOW_PROGRESS,
    )
    return tok, trainer


def _add_bert_template(tok: Tokenizer) -> None:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )


def train_tokenizer(
    cfg: TokenizerConfig,
    texts: Iterator[list[str]],
    out_dir: str | os.PathLike,
    length: int | None = None,
) -> Path:
    """Train from an iterator of text batches (streamed, never materialised) and save tokenizer.json.

    `texts` yields lists of strings, e.g. `dataset.iter(batch_size=1000)` mapped to its column,
    so a corpus larger than memory trains the same way as the embedded sample.
    """
    tok, trainer = _new_tokenizer(cfg)
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    if cfg.kind == "wordpiece":
        _add_bert_template(tok)
    elif cfg.kind == "joint_bpe":
        # encoder inputs end in </s> (as Marian's do): a transformers tokenizer built on this
        # file then gives the ids our model was trained on
        eos = tok.token_to_id(SEQ2SEQ_SPECIALS[2])
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", eos)]
        )
    path = Path(out_dir) / "tokenizer.json"
    atomic_write_text(path, tok.to_str(pretty=False))
    return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load `tokenizer.json` (or a folder holding it) with a clear error if it is missing."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer at {str(p)!r} (expected a tokenizer.json)")
    return Tokenizer.from_file(str(p))


def tokenizer_hash(tok_or_path: Tokenizer | str | os.PathLike) -> str:
    """Content hash of a tokenizer: same vocabulary and rules -> same hash, whatever the file path."""
    if isinstance(tok_or_path, Tokenizer):
        text = tok_or_path.to_str()
    else:
        p = Path(tok_or_path)
        text = (p / "tokenizer.json" if p.is_dir() else p).read_text()
    canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def special_tokens(tok: Tokenizer) -> SpecialTokens:
    t = tok.token_to_id
    eot = t(EOT)
    pad = t("[PAD]") if t("[PAD]") is not None else t(SEQ2SEQ_SPECIALS[0])
    return SpecialTokens(
        pad=pad if pad is not None else eot,
        unk=t("[UNK]"),
        cls=t("[CLS]"),
        sep=t("[SEP]"),
        mask=t("[MASK]"),
        eot=eot,
        # a seq2seq model warm-started from BERT (GPT) starts and ends with [CLS] / [SEP]
        # (end-of-text)
        bos=_first(t(SEQ2SEQ_SPECIALS[1]), t("[CLS]"), eot),
        eos=_first(t(SEQ2SEQ_SPECIALS[2]), t("[SEP]"), eot),
    )


def _first(*ids: int | None) -> int | None:
    return next((i for i in ids if i is not None), None)


def continuation_mask(tok: Tokenizer) -> list[bool]:
    """Per vocabulary id: True for WordPiece continuations (`##x`), used by whole-word masking."""
    vocab = tok.get_vocab()
    out = [False] * tok.get_vocab_size()
    for piece, idx in vocab.items():
        if piece.startswith("##"):
            out[idx] = True
    return out
