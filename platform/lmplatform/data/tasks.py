"""Turning labelled rows into model batches: tokenization, truncation, label alignment, padding.

Token classification puts each word's label on its first sub-token and -100 on the others, so
a word counts once however it is split; predictions are read back the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer

from lmplatform.tokenization import EOT, special_tokens


class TaskEncoder:
    def __init__(self, tokenizer: Tokenizer, kind: str, max_seq_len: int):
        self.tok = tokenizer
        self.kind = kind
        self.max_len = max_seq_len
        self.sp = special_tokens(tokenizer)
        self.bpe = tokenizer.token_to_id(EOT) is not None

    def _ids(self, text: str, pair: str | None = None) -> tuple[list[int], list[int], bool]:
        if not self.bpe:
            enc = self.tok.encode(text, pair) if pair is not None else self.tok.encode(text)
            ids, types = enc.ids, enc.type_ids
        else:
            a = self.tok.encode(text, add_special_tokens=False).ids
            b = (
                []
                if pair is None
                else [self.sp.eot] + self.tok.encode(" " + pair, add_special_tokens=False).ids
            )
            ids, types = a + b, [0] * len(a) + [1] * len(b)
        truncated = len(ids) > self.max_len
        if truncated:
            # keep the final special token ([SEP]) so BERT still sees a well-formed input
            ids = ids[: self.max_len - 1] + ids[-1:] if not self.bpe else ids[: self.max_len]
            types = types[: self.max_len]
        return ids, types, truncated

    def encode_words(self, words: Sequence[str], tags: Sequence[int] | None = None):
        """Word list -> ids, word index per token (None for specials), labels on first sub-tokens."""
        pieces = [w if (i == 0 or not self.bpe) else " " + w for i, w in enumerate(words)]
        enc = self.tok.encode(pieces, is_pretokenized=True, add_special_tokens=not self.bpe)
        ids, word_ids = list(enc.ids), list(enc.word_ids)
        truncated = len(ids) > self.max_len
        if truncated:
            ids = ids[: self.max_len - 1] + ids[-1:] if not self.bpe else ids[: self.max_len]
            word_ids = (
                word_ids[: self.max_len - 1] + [None] if not self.bpe else word_ids[: self.max_len]
            )
        labels = []
        prev = None
        for w in word_ids:
            first = w is not None and w != prev
            labels.append(tags[w] if (first and tags is not None) else -100)
            prev = w
        return ids, word_ids, labels, truncated

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Rows with text/text_pair/label or tokens/tags -> padded tensors."""
        seqs, types, labels, truncated = [], [], [], []
        for r in rows:
            if self.kind == "token_classification":
                ids, _, lab, tr = self.encode_words(r["tokens"], r.get("tags"))
                t = [0] * len(ids)
                labels.append(lab)
            else:
                ids, t, tr = self._ids(
                    r["text"], r.get("text_pair") if self.kind == "pair_classification" else None
                )
                labels.append(r.get("label", -100))
            seqs.append(ids)
            types.append(t)
            truncated.append(tr)
        out = pad(seqs, types, self.sp.pad)
        B, T = out["input_ids"].shape
        if self.kind == "token_classification":
            lab = torch.full((B, T), -100, dtype=torch.long)
            for i, lrow in enumerate(labels):
                lab[i, : len(lrow)] = torch.tensor(lrow)
            out["labels"] = lab
        else:
            out["labels"] = torch.tensor(labels, dtype=torch.long)
        out["truncated"] = torch.tensor(truncated)
        return out


def pad(
    ids: list[list[int]], types: list[list[int]], pad_id: int, to: torch.device | None = None
) -> dict[str, torch.Tensor]:
    T = max(len(s) for s in ids)
    B = len(ids)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    token_types = torch.zeros((B, T), dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    for i, (s, t) in enumerate(zip(ids, types)):
        input_ids[i, : len(s)] = torch.tensor(s)
        token_types[i, : len(t)] = torch.tensor(t)
        attention[i, : len(s)] = 1
    out = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types}
    return out if to is None or to.type == "cpu" else {k: v.to(to) for k, v in out.items()}
