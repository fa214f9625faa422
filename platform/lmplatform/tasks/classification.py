"""Sentence and sentence-pair classification (sentiment, topics, spam, entailment): one label per
input, a pooled head, accuracy / macro F1 / the F1 of one class."""

from __future__ import annotations

import json
import re
import reprlib
from collections import Counter
from typing import Any

import torch
from pydantic import BaseModel, StrictStr

from lmplatform.metrics import classification_counts, classification_report_of
from lmplatform.tasks.base import Encoding, InputError, Item, Scorer, TaskType, parse_text


def shown(value: Any, width: int = 60) -> str:
    """A value as the data file wrote it (JSON), cut to `width` characters, for an error."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = reprlib.repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def value_text(raw: Any, what: str) -> tuple[str, str | None]:
    """A label or text (`what`) of a record as a string, or why it is none (None: missing, "").
    JSON lines and parquet hold more than strings: an integer reads as its digits, as `1` in a
    CSV does, and so does an integral float (`1.0`: pandas writes integer labels as floats when
    a value is missing). Booleans, other floats (NaN too), objects and lists would otherwise
    become their Python repr ('nan', "{'a': 1}"), a class or a text nobody wrote."""
    if raw is None or isinstance(raw, str):
        return ("" if raw is None else raw.strip()), None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw), None
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw)), None
    if what == "label":
        return "", f"bad label {shown(raw)} (a label is a string or an integer)"
    return "", f"{what} is not a string: {shown(raw)}"


def label_index(raw: Any, labels: list[str]) -> int | None:
    """A label's position in `labels`, or None. Never read as an index: with labels '1'..'5',
    '0' is unknown (task.labels_are_indices maps indices to labels when the data holds them)."""
    s = str(raw).strip()
    return labels.index(s) if s in labels else None


_INTEGER = re.compile(r"-?[0-9]{1,18}")  # ASCII digits: '²' and '٣' are names, not numbers


def _label_order(s: str):
    # numeric labels in numeric order ('2' before '10'), then names alphabetically
    numeric = _INTEGER.fullmatch(s) is not None
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
        self.add_labels(logits.argmax(-1).tolist(), rows)

    def add_labels(self, predicted, rows):
        self.pred += predicted
        self.gold += [r["label"] for r in rows]

    def counts(self):
        return classification_counts(self.pred, self.gold, self.outputs)

    def result_of(self, counts):
        rep = classification_report_of(counts, self.outputs)
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
    baseline = "TF-IDF 1-2-grams + linear SVM"
    pair = False

    def check_source(self, source):
        return source

    def rows(self, rec, source, labels):
        row: dict[str, str] = {}
        row["text"], text_err = value_text(rec.get(source.text_column), "text")
        pair_err = None
        if self.pair:
            row["text_pair"], pair_err = value_text(rec.get(source.text_pair_column), "text pair")
        row["label"], label_err = value_text(rec.get(source.label_column), "label")
        error = None
        if source.text_column not in rec:
            error = f"missing column {source.text_column!r} (have: {', '.join(rec)})"
        elif text_err or pair_err or label_err:
            error = text_err or pair_err or label_err
        elif not row["text"]:
            error = "empty text"
        elif self.pair and not row["text_pair"]:
            error = f"empty text pair (column {source.text_pair_column!r})"
        elif not row["label"]:
            error = "missing label"
        elif labels is not None and label_index(row["label"], labels) is None:
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

    def baseline_predictions(self, train_rows, dev_rows, outputs):
        from lmplatform.tasks.baseline import text_classifier

        return text_classifier(train_rows, [r["label"] for r in train_rows], dev_rows)

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
