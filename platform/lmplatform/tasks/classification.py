"""Sentence and sentence-pair classification (sentiment, topics, spam, entailment): one label per
input, a pooled head, accuracy / macro F1 / the F1 of one class."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from pydantic import BaseModel, StrictStr

from lmplatform.metrics import classification_report
from lmplatform.tasks.base import Encoding, InputError, Item, Scorer, TaskType, parse_text


def label_index(raw: Any, labels: list[str]) -> int | None:
    """A label's position in `labels`, or None. Never read as an index: with labels '1'..'5',
    '0' is unknown (task.labels_are_indices maps indices to labels when the data holds them)."""
    s = str(raw).strip()
    return labels.index(s) if s in labels else None


def _label_order(s: str):
    # numeric labels in numeric order ('2' before '10'), then names alphabetically
    numeric = s.lstrip("-").isdigit()
    return (not numeric, int(s) if numeric else 0, s)


class ClassificationPrediction(BaseModel):
    label: str
    score: float
    scores: dict[str, float]
    truncated: bool = False


class _Scorer(Scorer):
    def __init__(self, outputs: list[str]):
        self.outputs, self.pred, self.gold = outputs, [], []

    def add(self, logits, batch, rows):
        self.pred += logits.argmax(-1).tolist()
        self.gold += [r["label"] for r in rows]

    def result(self):
        rep = classification_report(self.pred, self.gold, self.outputs)
        return {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}, rep["per_class"]


class Classification(TaskType):
    name = "classification"
    layout = "pooled"
    metrics = ("accuracy", "macro_f1")
    class_metric = True
    columns = {"text": "string", "label": "string"}
    input_schema = StrictStr
    prediction_schema = ClassificationPrediction
    smoke_input = "hello world"
    pair = False

    def check_source(self, source):
        return source

    def rows(self, rec, source, labels):
        text = rec.get(source.text_column)
        label = rec.get(source.label_column)
        row = {"text": "" if text is None else str(text).strip()}
        if self.pair:
            row["text_pair"] = str(rec.get(source.text_pair_column or "", "") or "").strip()
        row["label"] = "" if label is None else str(label).strip()
        error = None
        if source.text_column not in rec:
            error = f"missing column {source.text_column!r} (have: {', '.join(rec)})"
        elif not row["text"]:
            error = "empty text"
        elif self.pair and not row["text_pair"]:
            error = f"empty text pair (column {source.text_pair_column!r})"
        elif not row["label"]:
            error = "missing label"
        elif labels is not None and label_index(label, labels) is None:
            error = f"unknown label {row['label']!r} (allowed: {', '.join(labels)})"
        yield row, error

    def finish(self, ds, labels):
        labels = list(labels) if labels is not None else sorted(set(ds["label"]), key=_label_order)
        ds = ds.map(lambda lab: {"label_id": label_index(lab, labels)}, input_columns="label")
        ds = ds.remove_columns("label").rename_column("label_id", "label")
        return ds, labels

    def label_counts(self, ds, outputs):
        counts = Counter(ds["label"])
        return {name: counts[i] for i, name in enumerate(outputs)}

    def collate(self, enc, rows):
        ids, types, truncated = [], [], []
        for r in rows:
            i, t, tr = enc.encode_text(r["text"], r.get("text_pair") if self.pair else None)
            ids.append(i)
            types.append(t)
            truncated.append(tr)
        from lmplatform.tasks.encoding import pad

        out = pad(ids, types, enc.sp.pad)
        out["labels"] = torch.tensor([r.get("label", -100) for r in rows], dtype=torch.long)
        out["truncated"] = torch.tensor(truncated)
        return out

    def scorer(self, outputs, classes, **_):
        return _Scorer(outputs)

    def parse(self, x, where, max_len, options):
        if not isinstance(x, str):
            raise InputError(f"{where}: expected a string for a classification task")
        text, cut = parse_text(x, where, max_len)
        return Item(text=text, cut=cut)

    def encode(self, enc, item):
        ids, types, truncated = enc.encode_text(item.text, item.pair)
        return Encoding(ids, types, truncated=bool(truncated or item.cut))

    def decode(self, item, probs, encoding, outputs):
        p = probs.tolist()
        best = max(range(len(p)), key=p.__getitem__)
        return {
            "label": outputs[best],
            "score": p[best],
            "scores": dict(zip(outputs, p)),
            "truncated": encoding.truncated,
        }


class PairClassification(Classification):
    name = "pair_classification"
    columns = {"text": "string", "text_pair": "string", "label": "string"}
    input_schema = list[StrictStr]  # [text_a, text_b]: the length is checked by `parse`
    smoke_input = ["hello", "world"]
    pair = True

    def check_source(self, source):
        if not source.text_pair_column:
            from lmplatform.data.sources import DataError

            raise DataError(f"{source.describe()}: pair_classification needs text_pair_column")
        return source

    def parse(self, x, where, max_len, options):
        if not isinstance(x, list) or len(x) != 2:
            raise InputError(f"{where}: expected [text_a, text_b] for a pair_classification task")
        (a, cut_a), (b, cut_b) = (parse_text(t, f"{where}[{i}]", max_len) for i, t in enumerate(x))
        return Item(text=a, pair=b, cut=cut_a or cut_b)


CLASSIFICATION = Classification()
PAIR_CLASSIFICATION = PairClassification()
