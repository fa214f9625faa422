"""A task's labelled rows from its data source: read, checked row by row, bad rows counted and
reported (the run fails above `max_bad_fraction`), labels encoded — the task type says how."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass

import datasets

from lmplatform.data.sources import DataSource, checked_fingerprint, iter_records, report_bad_rows
from lmplatform.tasks import task_type
from lmplatform.tasks.base import TaskType

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
    report: object  # data.sources.BadRows
    fingerprint: str


def _code_version(tt: TaskType) -> str:
    """`datasets` caches generator output by the generator's arguments, not its code: a new
    version of the task type's row parsing must not read rows an old one cached."""
    h = hashlib.sha256(open(__file__, "rb").read())
    h.update(inspect.getsource(inspect.getmodule(type(tt))).encode())
    return h.hexdigest()[:12]


def _task_rows(source_json: str, type_name: str, labels_json: str, fingerprint: str):
    """Generator for `Dataset.from_generator`; `fingerprint` is only there to key the cache."""
    source = DataSource.model_validate_json(source_json)
    tt = task_type(type_name)
    labels = json.loads(labels_json)
    empty = {c: _FEATURES[kind][1] for c, kind in tt.columns.items()}
    for where, rec, err in iter_records(source):
        if rec is None or err:  # unreadable: one bad row, whatever the task type would make
            yield {"_where": where, "_error": err or "unreadable record", **empty}
            continue
        for row, row_err in tt.rows(rec, source, labels):
            yield {"_where": where, "_error": row_err, **empty, **row}


def load_labelled(
    source: DataSource,
    task: str | TaskType,
    labels: list[str] | None = None,
    max_bad_fraction: float = 0.01,
) -> LabelledData:
    """Read a task's rows, count and report bad ones, fail above `max_bad_fraction`, encode labels.

    With `labels=None` the label set is taken from the data (sorted); the task type says what
    a label is (a class, an entity type, a semantic role).
    """
    tt = task_type(task) if isinstance(task, str) else task
    source = tt.check_source(source)
    fp = f"{checked_fingerprint(source)}-{_code_version(tt)}"
    features = {c: _FEATURES[kind][0] for c, kind in tt.columns.items()}
    raw = datasets.Dataset.from_generator(
        _task_rows,
        # lists in gen_kwargs would be split into shards by `datasets`: pass JSON strings
        gen_kwargs=dict(
            source_json=source.model_dump_json(),
            type_name=tt.name,
            labels_json=json.dumps(labels),
            fingerprint=fp,
        ),
        features=datasets.Features(
            {"_where": datasets.Value("string"), "_error": datasets.Value("string"), **features}
        ),
    )
    report = report_bad_rows(raw, source.describe())
    report.check(max_bad_fraction)
    good = raw.filter(lambda e: e is None, input_columns="_error")
    ds, labels = tt.finish(good.remove_columns(["_where", "_error"]), labels)
    return LabelledData(dataset=ds, labels=list(labels), report=report, fingerprint=fp)
