"""Task inputs as token ids, for every task type: texts and text pairs, word lists, padding.

Word-level tasks put each word's label on its first sub-token and -100 on the others, so a word
counts once however it is split; predictions are read back the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer

from lmplatform.tokenization import EOT, special_tokens


class TaskEncoder:
    """A task's tokenizer and length limit; `collate` turns rows into a batch the way the task
    type says."""

    def __init__(self, tokenizer: Tokenizer, kind: str, max_seq_len: int):
        from lmplatform.tasks import task_type

        self.tok = tokenizer
        self.task = task_type(kind)
        self.max_len = max_seq_len
        self.sp = special_tokens(tokenizer)
        self.bpe = tokenizer.token_to_id(EOT) is not None

    def encode_text(self, text: str, pair: str | None = None) -> tuple[list[int], list[int], bool]:
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
        """Rows of this task type -> padded tensors with labels and `truncated` flags."""
        return self.task.collate(self, rows)


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
