"""Semantic role labelling, dependency-based (Universal Propositions / CoNLL-2009 style): for one
predicate of a sentence, the role (`ARG0`, `ARG1`, `ARGM-TMP`, …) of each argument's head word.

- Rows: one per predicate. A CoNLL-U sentence with P predicates (column 11: the sense, `_` for
  none) has P argument columns after it, in predicate order; `V` marks the predicate itself,
  `_` words that are no argument (read as `O`).
- Model: the encoder sees which word is the predicate (BERT: segment id 1 on its sub-tokens),
  and a `predicate` head classifies every word from its hidden state concatenated with the
  predicate's, so the same sentence gets other roles for another predicate and families without
  segment ids still know which predicate is meant.
- Metric: labelled argument F1 over (predicate, head word, role) triples, the predicate's own
  `V` excluded (metrics.srl_report); roles the training data never had stay in the gold triples
  and count as misses.
"""

from __future__ import annotations

from collections import Counter

import torch
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from lmplatform.metrics import srl_counts, srl_report_of
from lmplatform.tasks.base import (
    EMPTY_SCORES,
    Encoding,
    InputError,
    TaskType,
    pad_labels,
)
from lmplatform.tasks.token_classification import WordScorer, first_subtoken_labels, parse_words

NONE, PREDICATE = "O", "V"


class SrlInput(BaseModel):
    """One predicate of a sentence: `words` (a list) or `text` (split at whitespace), and the
    predicate's word index (0-based)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    words: list[StrictStr] | None = None
    text: StrictStr | None = None
    predicate: StrictInt


class Argument(BaseModel):
    label: str
    head: int
    """Word index of the argument's head word."""
    text: str
    """The head word."""
    score: float


class SrlPrediction(BaseModel):
    labels: list[str]
    """One role per word: `O` (no argument), `V` (the predicate) or the role of a head word."""
    predicate: int
    arguments: list[Argument]
    truncated: bool = False


class _Scorer(WordScorer):
    none = NONE

    def first_subtokens(self, batch, j):
        return batch["word_starts"][j]  # the predicate's own position has no label to mask by

    def gold_labels(self, row):
        return list(row["tags"])

    def add_labels(self, predicted, rows):
        super().add_labels(predicted, rows)
        for p, r in zip(self.pred[-len(rows) :], rows):
            p[r["predicate"]] = PREDICATE

    def counts(self):
        return srl_counts(self.pred, self.gold)

    def result_of(self, counts):
        rep = srl_report_of(counts)
        per = {c: rep["per_label"].get(c, EMPTY_SCORES) for c in self.classes}
        metrics = {k: rep[k] for k in ("argument_f1", "argument_precision", "argument_recall")}
        return metrics, per


class SemanticRoleLabelling(TaskType):
    name = "srl"
    layout = "predicate"
    metrics = ("argument_f1",)
    file_format = "conllu"
    columns = {"tokens": "strings", "tags": "strings", "predicate": "int"}
    input_schema = SrlInput
    prediction_schema = SrlPrediction
    smoke_input = {"text": "hello world", "predicate": 0}
    baseline = "word and predicate features + linear SVM"

    def rows(self, rec, source, labels):
        words, cols = rec.get("tokens", []), rec.get("columns", [])
        predicates = [i for i, c in enumerate(cols) if c and c[0] not in ("_", "")]
        for k, p in enumerate(predicates):
            tags = [
                c[1 + k] if len(c) > 1 + k and c[1 + k] not in ("_", "") else NONE for c in cols
            ]
            error = None
            if any(len(c) < 1 + len(predicates) for c in cols):
                error = f"{len(predicates)} predicates but fewer argument columns on some word"
            elif tags[p] != PREDICATE:
                error = (
                    f"argument column {k + 1} has no {PREDICATE!r} on its predicate (word {p + 1})"
                )
            yield {"tokens": words, "tags": tags, "predicate": p}, error

    def finish(self, ds, labels):
        if labels is None:
            labels = sorted({t for tags in ds["tags"] for t in tags} - {NONE, PREDICATE})
        index = {t: i for i, t in enumerate(self.outputs(labels, None))}
        # role ids for the loss (V and roles outside `labels`: none); `tags` stay the gold
        ds = ds.map(
            lambda tags: {"tag_ids": [index.get(t, -100) for t in tags]}, input_columns="tags"
        )
        return ds, list(labels)

    def label_counts(self, ds, outputs):
        # argument words per role (roles outside `labels` included: they are in the data)
        counts = Counter(t for tags in ds["tags"] for t in tags if t not in (NONE, PREDICATE))
        return dict(counts.most_common())

    def outputs(self, labels, label_names):
        return [NONE, *labels]

    def classes(self, labels, label_names):
        return list(labels)

    def collate(self, enc, rows):
        from lmplatform.tasks.encoding import pad

        ids, types, labels, starts, preds, truncated = [], [], [], [], [], []
        for r in rows:
            e = self._encode(enc, r["tokens"], r["predicate"], r.get("tag_ids"))
            ids.append(e.ids)
            types.append(e.types)
            labels.append(e.extra.pop("labels"))
            starts.append(e.extra.pop("starts"))
            preds.append(e.extra["predicate_pos"])
            truncated.append(e.truncated)
        out = pad(ids, types, enc.sp.pad)
        width = out["input_ids"].shape[1]
        out["labels"] = pad_labels(labels, width)
        out["word_starts"] = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, s in enumerate(starts):
            out["word_starts"][i, s] = True
        out["predicate_pos"] = torch.tensor(preds, dtype=torch.long)
        out["truncated"] = torch.tensor(truncated)
        return out

    def _encode(self, enc, words, predicate, tag_ids=None) -> Encoding:
        ids, word_ids, lab, truncated = enc.encode_words(words, tag_ids)
        positions = [i for i, w in enumerate(word_ids) if w == predicate]
        types = [int(w == predicate) for w in word_ids]
        starts, prev = [], None
        for i, w in enumerate(word_ids):
            if w is not None and w != prev:
                starts.append(i)
            prev = w
        if not positions:  # the predicate was cut off: nothing to learn or predict
            lab = [-100] * len(ids)
        extra = {"predicate_pos": positions[0] if positions else 0, "labels": lab, "starts": starts}
        return Encoding(ids, types, word_ids, bool(truncated), extra)

    def scorer(self, outputs, classes, **_):
        return _Scorer(outputs, classes)

    def baseline_predictions(self, train_rows, dev_rows, outputs):
        from lmplatform.tasks.baseline import predicate_features, word_classifier

        def features(rows):
            return [predicate_features(r["tokens"], r["predicate"]) for r in rows]

        # what the model can learn: the roles of `labels`, everything else (V too) none
        known = set(outputs)
        tags = [[t if t in known else NONE for t in r["tags"]] for r in train_rows]
        return word_classifier(features(train_rows), tags, features(dev_rows))

    def parse(self, x, where, max_len, options):
        if isinstance(x, BaseModel):
            x = x.model_dump(exclude_none=True)
        if not isinstance(x, dict):
            raise InputError(
                f'{where}: expected {{"words": [...], "predicate": i}} or '
                f'{{"text": "...", "predicate": i}} for an srl task'
            )
        unknown = sorted(set(x) - {"words", "text", "predicate"})
        if unknown:
            raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
        if ("words" in x) == ("text" in x):
            raise InputError(f"{where}: give exactly one of `words` and `text`")
        p = x.get("predicate")
        if not isinstance(p, int) or isinstance(p, bool):
            raise InputError(f"{where}.predicate: expected a word index (integer)")
        split = "words" in x
        item = parse_words(
            x["words"] if split else x["text"],
            f"{where}.{'words' if split else 'text'}",
            max_len,
            split,
            "",
        )
        if not 0 <= p < item.n_words:
            raise InputError(
                f"{where}.predicate: {p} is out of range (the input has {item.n_words} words: "
                f"0..{item.n_words - 1})"
            )
        item.predicate = p
        return item

    def encode(self, enc, item):
        e = self._encode(enc, item.words, item.predicate)
        e.extra = {"predicate_pos": e.extra["predicate_pos"]}
        e.truncated = bool(e.truncated or item.cut or item.predicate not in e.word_ids)
        return e

    def decode(self, item, probs, encoding, outputs):
        n, p = len(item.words), item.predicate
        labels, conf = first_subtoken_labels(probs, encoding.word_ids, n, outputs, NONE)
        if p not in encoding.word_ids:  # the predicate never reached the model: no roles
            labels, conf = [NONE] * n, [1.0] * n
        labels += [NONE] * (item.n_words - n)
        labels[p] = PREDICATE
        arguments = [
            {"label": lab, "head": i, "text": item.words[i], "score": conf[i]}
            for i, lab in enumerate(labels[:n])
            if lab not in (NONE, PREDICATE)
        ]
        return {
            "labels": labels,
            "predicate": p,
            "arguments": arguments,
            "truncated": encoding.truncated,
        }


SRL = SemanticRoleLabelling()
