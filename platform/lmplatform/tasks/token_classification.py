"""Token classification (named entities): an IOB2 tag per word, entity-level F1 as seqeval
computes it, entities with character offsets (string input) or word indices (word lists)."""

from __future__ import annotations

import re
from collections import Counter

import torch
from pydantic import BaseModel, StrictStr

from lmplatform.metrics import entity_counts, entity_report_of, get_entities
from lmplatform.tasks.base import (
    CHARS_PER_POSITION,
    EMPTY_SCORES,
    Encoding,
    InputError,
    Item,
    Scorer,
    TaskType,
    check_text,
    pad_labels,
)

WORD = re.compile(r"\S+")
_IOB2 = re.compile(r"O|[BI]-\S+")


def bio_tags(entity_types: list[str]) -> list[str]:
    """IOB2 tag list for entity types: O, then B-/I- for each type in order."""
    return ["O"] + [f"{p}-{t}" for t in entity_types for p in ("B", "I")]


class Entity(BaseModel):
    label: str
    text: str
    start: int
    """Character offset (string input) or word index (word-list input)."""
    end: int
    """Exclusive."""
    score: float


class TokenPrediction(BaseModel):
    tags: list[str]
    """One IOB2 tag per word."""
    entities: list[Entity]
    truncated: bool = False


def parse_words(x, where: str, max_len: int, split: bool, what: str) -> Item:
    """A string (split at whitespace, character offsets kept) or a list of words -> the words
    the model can see (a word takes at least one position), with the input's word count."""
    limit = max_len * CHARS_PER_POSITION
    if split:
        if not isinstance(x, list) or not x:
            raise InputError(f"{where}: expected a non-empty list of words{what}")
        words = [check_text(w, f"{where}[{j}]").strip() for j, w in enumerate(x)]
        if any(WORD.fullmatch(w) is None for w in words):
            raise InputError(f"{where}: a word must not contain whitespace")
        keep = words[:max_len]
        return Item(words=[w[:limit] for w in keep], cut=len(words) > len(keep), n_words=len(words))
    t = check_text(x, where)
    matches = list(WORD.finditer(t))
    keep = matches[:max_len]
    return Item(
        text=t,
        words=[m.group()[:limit] for m in keep],
        spans=[m.span() for m in keep],
        cut=len(matches) > len(keep),
        n_words=len(matches),
    )


def first_subtoken_labels(
    probs: torch.Tensor, word_ids: list, n: int, outputs: list[str], default: str
):
    """Label and confidence per word, read on each word's first sub-token."""
    labels, conf = [default] * n, [1.0] * n
    prev = None
    for pos, w in enumerate(word_ids):
        if w is not None and w != prev:
            best = int(probs[pos].argmax())
            labels[w], conf[w] = outputs[best], float(probs[pos, best])
        prev = w
    return labels, conf


class WordScorer(Scorer):
    """Collects one predicted label per word (read on first sub-tokens; words cut by truncation
    get `none`) and the gold labels, row by row."""

    none = "O"

    def __init__(self, outputs: list[str], classes: list[str]):
        self.outputs, self.classes, self.pred, self.gold = outputs, classes, [], []

    def first_subtokens(self, batch: dict, j: int) -> torch.Tensor:
        return batch["labels"][j] != -100

    def gold_labels(self, row: dict) -> list[str]:
        return [self.outputs[x] for x in row["tags"]]

    def add(self, logits, batch, rows):
        arg = logits.argmax(-1)
        predicted = []
        for j, r in enumerate(rows):
            p = [self.outputs[x] for x in arg[j][self.first_subtokens(batch, j)].tolist()]
            predicted.append(p + [self.none] * (len(r["tokens"]) - len(p)))
        self.add_labels(predicted, rows)

    def add_labels(self, predicted, rows):
        """`predicted`: one label name per word of each row."""
        self.pred += predicted
        self.gold += [self.gold_labels(r) for r in rows]


class _Scorer(WordScorer):
    def counts(self):
        return entity_counts(self.pred, self.gold)

    def result_of(self, counts):
        rep = entity_report_of(counts)
        # every entity type of the task, also those never predicted nor in these rows
        per = {e: rep["per_type"].get(e, EMPTY_SCORES) for e in self.classes}
        return {"entity_f1": rep["entity_f1"]}, per


def _strings(x) -> bool:
    return isinstance(x, list) and all(isinstance(t, str) for t in x)


class TokenClassification(TaskType):
    name = "token_classification"
    layout = "token"
    metrics = ("entity_f1",)
    file_format = "conll"  # CoNLL files are often *.txt
    columns = {"tokens": "strings", "tags": "strings"}
    input_schema = StrictStr | list[StrictStr]
    prediction_schema = TokenPrediction
    smoke_input = "hello world"
    accepts_split_words = True
    baseline = "word features + linear SVM"

    def rows(self, rec, source, labels):
        tokens, tags = rec.get("tokens", []), rec.get("tags", [])
        error = None
        allowed = bio_tags(labels) if labels else None
        if not _strings(tokens) or not _strings(tags):
            yield {"tokens": [], "tags": []}, "tokens and tags must be lists of strings"
            return
        if not tokens:
            error = "empty sentence"
        elif len(tokens) != len(tags):
            # (JSON lines; a CoNLL line always holds both) one tag per word, or every tag
            # after the gap would label the wrong word
            error = f"tokens and tags differ in length: {len(tokens)} tokens, {len(tags)} tags"
        elif allowed is not None:
            bad = [t for t in tags if t not in allowed]
            if bad:
                error = f"unknown label {bad[0]!r} (allowed: {', '.join(allowed)})"
        elif any(not _IOB2.fullmatch(t) for t in tags):
            t = next(t for t in tags if not _IOB2.fullmatch(t))
            error = f"unknown label {t!r} (not an IOB2 tag)"
        yield {"tokens": tokens, "tags": tags}, error

    def finish(self, ds, labels):
        if labels is None:
            labels = sorted({t[2:] for tags in ds["tags"] for t in tags if t != "O"})
        index = {t: i for i, t in enumerate(bio_tags(labels))}
        ds = ds.map(lambda tags: {"tag_ids": [index[t] for t in tags]}, input_columns="tags")
        return ds.remove_columns("tags").rename_column("tag_ids", "tags"), list(labels)

    def label_counts(self, ds, outputs):
        # entities, counted at their first word
        counts = Counter(
            outputs[t][2:] for tags in ds["tags"] for t in tags if outputs[t][0] == "B"
        )
        return {e: counts[e] for e in dict.fromkeys(o[2:] for o in outputs if o != "O")}

    def outputs(self, labels, label_names):
        return bio_tags(labels)

    def classes(self, labels, label_names):
        return list(labels)

    def collate(self, enc, rows):
        from lmplatform.tasks.encoding import pad

        ids, labels, truncated = [], [], []
        for r in rows:
            i, _, lab, tr = enc.encode_words(r["tokens"], r.get("tags"))
            ids.append(i)
            labels.append(lab)
            truncated.append(tr)
        out = pad(ids, [[0] * len(i) for i in ids], enc.sp.pad)
        out["labels"] = pad_labels(labels, out["input_ids"].shape[1])
        out["truncated"] = torch.tensor(truncated)
        return out

    def scorer(self, outputs, classes, **_):
        return _Scorer(outputs, classes)

    def baseline_predictions(self, train_rows, dev_rows, outputs):
        from lmplatform.tasks.baseline import word_classifier, word_features

        def features(rows):
            return [[word_features(r["tokens"], i) for i in range(len(r["tokens"]))] for r in rows]

        tags = [[outputs[t] for t in r["tags"]] for r in train_rows]
        return word_classifier(features(train_rows), tags, features(dev_rows))

    def parse(self, x, where, max_len, options):
        split = options.get("is_split_into_words", False)
        if not split and not isinstance(x, str):
            raise InputError(
                f"{where}: expected a string (or, with is_split_into_words, a list of words)"
            )
        return parse_words(x, where, max_len, split, " (is_split_into_words)")

    def encode(self, enc, item):
        ids, word_ids, _, truncated = enc.encode_words(item.words)
        return Encoding(ids, [0] * len(ids), word_ids, bool(truncated or item.cut))

    def decode(self, item, probs, encoding, outputs):
        n = len(item.words)
        tags, conf = first_subtoken_labels(probs, encoding.word_ids, n, outputs, "O")
        entities = []
        for label, s, e in get_entities(tags):
            score = sum(conf[s : e + 1]) / (e - s + 1)
            if item.spans is not None:  # string input: character offsets
                start, end = item.spans[s][0], item.spans[e][1]
                text = item.text[start:end]
            else:  # word list: word indices, end exclusive
                start, end, text = s, e + 1, " ".join(item.words[s : e + 1])
            entities.append(
                {"label": label, "text": text, "start": start, "end": end, "score": score}
            )
        # words the model never saw (cut, or truncated by the tokenizer) are tagged "O"
        return {
            "tags": tags + ["O"] * (item.n_words - n),
            "entities": entities,
            "truncated": encoding.truncated,
        }


TOKEN_CLASSIFICATION = TokenClassification()
