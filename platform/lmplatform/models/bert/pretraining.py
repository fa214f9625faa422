"""BERT's pretraining examples: segment pairs with real next-sentence labels, masked per batch.

Segment pairs up to `max_seq_len` as in Devlin et al. (2019) — A and B are runs of whole
sentences, and half of the B segments come from a different document (real next-sentence
prediction). Masking is *not* stored: `mask_tokens` draws it for every batch, so each epoch
sees new masks (dynamic masking, Liu et al. 2019).
"""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np
import pyarrow as pa
import torch

from lmplatform import storage
from lmplatform.models.objective import ExamplesConfig, Objective, arrow_lists

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
                "input_ids": arrow_lists(ids_out, pa.int32()),
                "token_type_ids": arrow_lists(types_out, pa.int8()),
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


def _nsp_stats(files: list[str]) -> dict:
    import pyarrow.compute as pc

    n = random_next = 0
    for f in files:
        t = storage.read_parquet([f], columns=["next_sentence_label"])
        n += t.num_rows
        random_next += int(pc.sum(pc.equal(t["next_sentence_label"], 1)).as_py() or 0)
    return {"nsp_random_fraction": round(random_next / n, 4) if n else 0.0}


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


MLM_NSP = Objective(
    "bert", BertPairBuilder, bert_collator, ("eval_loss", "mlm_acc", "nsp_acc"), _nsp_stats
)
"""BERT: masked LM (masks drawn per batch) and next-sentence prediction on segment pairs."""
