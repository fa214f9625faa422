"""Checkpoints written by transformers' own classes (random weights, tiny): what a user brings
to `parent: hf:<folder>` / `init_from: hf:<folder>`."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import transformers

BERT_SPECIALS = dict(
    unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
)


def save_bert(
    folder: Path,
    tokenizer_json: Path,
    vocab_size: int,
    hidden: int = 32,
    max_len: int = 64,
    head: str = "BertForMaskedLM",
    seed: int = 0,
    tokenizer_via_transformers: bool = True,
):
    """A 2-layer BERT saved by `save_pretrained`, with its tokenizer saved by transformers (or
    the tokenizer.json copied as it is, to keep its content hash)."""
    cfg = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_len,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, head)(cfg).eval()
    model.save_pretrained(folder)
    if tokenizer_via_transformers:
        transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(tokenizer_json), **BERT_SPECIALS
        ).save_pretrained(folder)
    else:
        shutil.copyfile(tokenizer_json, Path(folder) / "tokenizer.json")
    return model
