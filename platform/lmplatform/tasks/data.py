"""A task's labelled rows from its data source: read, checked row by row, bad rows counted and
reported (the run fails above `max_bad_fraction`), labels encoded — the task type says how."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass

import datasets

from lmplatform.data.badrows import BadRows, report_bad_rows
from lmplatform.data.readers import generate, iter_records
from lmplatform.data.sources import Checked, DataError, DataSource, check_source
from lmplatform.tasks import task_type
from lmplatform.tasks.base import TaskType
from lmplatform.tasks.classification import value_text

_FEATURES = {
    "string": (datasets.Value("string"), ""),
    "strings": (datasets.Sequence(datasets.Value("string")), []),
    "int": (datasets.Value("int64"), -1),
}


@dataclass
class LabelledData:
    """Validated rows plus the label names they are encoded with and the bad-row report."""

    dataset: datasets.Dataset
    labels: list[str]
    report: BadRows
    fingerprint: str
    checked: Checked
    """The files read and their format (and how it was decided)."""


def _code_version(tt: TaskType) -> str:
    """`datasets` caches generator output by the generator's arguments, not its code: a new
    version of the task type's row parsing must not read rows an old one cached."""
    h = hashlib.sha256(open(__file__, "rb").read())
    h.update(inspect.getsource(inspect.getmodule(type(tt))).encode())
    return h.hexdigest()[:12]


def _task_rows(checked_json: str, type_name: str, labels_json: str, index_labels: bool):
    """Generator for `Dataset.from_generator` (cached by these arguments: the checked source
    carries the data's and the code's fingerprint)."""
    checked = Checked.from_json(checked_json)
    source = checked.source
    tt = task_type(type_name)
    labels = json.loads(labels_json)
    empty = {c: _FEATURES[kind][1] for c, kind in tt.columns.items()}
    for where, rec, err in iter_records(checked):
        if rec is None or err:  # unreadable: one bad row, whatever the task type would make
            yield {"_where": where, "_error": err or "unreadable record", **empty}
            continue
        if index_labels:
            rec = _label_from_index(rec, source.label_column, labels)
        for row, row_err in tt.rows(rec, source, labels):
            yield {"_where": where, "_error": row_err, **empty, **row}


def _label_from_index(rec: dict, column: str, labels: list[str]) -> dict:
    """`labels_are_indices`: '2' means labels[2]. Only when the config says so: guessing would
    read the label '0' of labels '1'..'5' as the index of '1'."""
    raw, _ = value_text(rec.get(column), "label")  # 1 and 1.0 (JSON) are index 1 too
    # ASCII digits only: '²'.isdigit() is true and int('²') fails; 20 digits are no index
    if raw.isascii() and raw.isdecimal() and len(raw) < 10 and int(raw) < len(labels):
        return {**rec, column: labels[int(raw)]}
    return rec  # not an index: reported as an unknown (or bad) label


def load_labelled(
    source: DataSource,
    task: str | TaskType,
    labels: list[str] | None = None,
    max_bad_fraction: float = 0.01,
    labels_are_indices: bool = False,
) -> LabelledData:
    """Read a task's rows, count and report bad ones, fail above `max_bad_fraction`, encode labels.

    With `labels=None` the label set is taken from the data (sorted); the task type says what
    a label is (a class, an entity type, a semantic role).
    """
    tt = task_type(task) if isinstance(task, str) else task
    source = tt.check_source(source)
    checked = check_source(source, tt.file_format)
    checked.fingerprint = f"{checked.fingerprint}-{_code_version(tt)}"
    print(f"[data] {checked.describe()}", flush=True)
    features = {c: _FEATURES[kind][0] for c, kind in tt.columns.items()}
    raw = generate(
        _task_rows,
        # lists in gen_kwargs would be split into shards by `datasets`: pass JSON strings
        dict(
            checked_json=checked.to_json(),
            type_name=tt.name,
            labels_json=json.dumps(labels),
            index_labels=labels_are_indices,
        ),
        datasets.Features(
            {"_where": datasets.Value("string"), "_error": datasets.Value("string"), **features}
        ),
    )
    report = report_bad_rows(raw, source.describe())
    report.check(max_bad_fraction)
    good = raw.filter(lambda e: e is None, input_columns="_error")
    if len(good) == 0:
        raise DataError(f"no usable rows: {report.summary()}")
    ds, labels = tt.finish(good.remove_columns(["_where", "_error"]), labels)
    return LabelledData(ds, list(labels), report, checked.fingerprint, checked)


# --------------------------------------------------------------------------- data report

LENGTH_SAMPLE = 20_000
"""Rows tokenized for the length figures (a fixed sample: exact enough, fast on any size)."""


def data_report(
    part: LabelledData, tt: TaskType, tokenizer, max_seq_len: int, outputs: list[str]
) -> dict:
    """What a person checks before trusting a model trained on these rows: where they came
    from and in which format, rows read and dropped (by reason, with the first few), the label
    distribution, token lengths and how many rows `max_seq_len` cuts."""
    import numpy as np

    from lmplatform.tasks.encoding import TaskEncoder

    rep = part.report
    out = {
        "source": rep.source,
        "files": part.checked.files[:20],
        "n_files": len(part.checked.files),
        "format": part.checked.source.format,
        "format_from": part.checked.how,
        "notes": part.checked.notes,
        "rows_read": rep.total,
        "rows_dropped": rep.bad,
        "dropped_by_reason": dict(rep.reasons.most_common()),
        "first_dropped": rep.examples[:10],
        "rows_used": len(part.dataset),
        "labels": tt.label_counts(part.dataset, outputs),
    }
    ds = part.dataset
    if len(ds) > LENGTH_SAMPLE:
        ds = ds.shuffle(seed=0).select(range(LENGTH_SAMPLE))
    enc = TaskEncoder(tokenizer, tt.name, 10**9)  # no cut: the lengths as written
    sides = _token_lengths(enc, ds)
    for side, lengths in sides.items():
        a = np.asarray(lengths)
        out[f"{side}_tokens"] = {
            "mean": round(float(a.mean()), 1),
            **{f"p{q}": int(np.percentile(a, q)) for q in (50, 90, 95, 99)},
            "max": int(a.max()),
        }
    longest = np.max(np.stack([np.asarray(v) for v in sides.values()]), axis=0)
    out["max_seq_len"] = max_seq_len
    out["truncated_fraction"] = round(float((longest > max_seq_len).mean()), 5)
    out["length_rows"] = len(ds)
    return out


def _token_lengths(enc, ds) -> dict[str, list[int]]:
    """Tokens per row as the task encodes it (specials included); seq2seq: per side."""
    cols = ds.column_names
    if "source" in cols:
        tok = enc.tok
        return {
            side: [len(e.ids) + 1 for e in tok.encode_batch(ds[side], add_special_tokens=False)]
            for side in ("source", "target")  # + EOS
        }
    if "tokens" in cols:
        return {"input": [len(enc.encode_words(w)[0]) for w in ds["tokens"]]}
    pairs = ds["text_pair"] if "text_pair" in cols else [None] * len(ds)
    return {"input": [len(enc.encode_text(t, p)[0]) for t, p in zip(ds["text"], pairs)]}


def describe_report(split: str, r: dict) -> str:
    """One console line of a data report."""
    dropped = ", ".join(f"{k} {v}" for k, v in r["dropped_by_reason"].items())
    labels = ", ".join(f"{k} {v}" for k, v in list(r["labels"].items())[:8])
    lengths = "; ".join(
        f"{k.removesuffix('_tokens')} tokens p50 {v['p50']} p95 {v['p95']} max {v['max']}"
        for k, v in r.items()
        if k.endswith("_tokens")
    )
    return (
        f"[data] {split}: {r['rows_read']} rows read, {r['rows_dropped']} dropped"
        + (f" ({dropped})" if dropped else "")
        + (f"; labels: {labels}" if labels else "")
        + f"; {lengths}; {r['truncated_fraction']:.2%} over max_seq_len={r['max_seq_len']}"
    )
