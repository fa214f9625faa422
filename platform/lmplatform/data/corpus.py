"""Text corpora: a data source's records read into documents (`read_corpus`), a
`datasets.Dataset` with one column, `text`, and the corpus's data report."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

if TYPE_CHECKING:
    import datasets

from lmplatform.config import StrictModel
from lmplatform.data.badrows import BadRows, report_bad_rows
from lmplatform.data.readers import generate, iter_records
from lmplatform.data.sources import Checked, DataError, DataSource, check_source


class CorpusConfig(StrictModel):
    source: DataSource
    """Where the raw text is."""
    document_split: Literal["line", "blank_line", "wikitext"] = "blank_line"
    """How rows become documents: each row ('line'), runs of lines separated by blank lines
    ('blank_line'), or WikiText articles that start at ' = Title = ' lines ('wikitext')."""
    min_chars: int = Field(20, ge=0)
    """Documents shorter than this are dropped."""
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    """Fail if more than this fraction of records (lines, rows, sentences) is unreadable."""


_TITLE = re.compile(r"^ = [^=].* = $")


def _documents(checked_json: str, document_split: str, min_chars: int):
    """Generator for `Dataset.from_generator`: documents, and one row per bad record; `_rows`
    counts the records each row stands for (lines merged into a document, short ones dropped),
    so that the bad fraction is of records read, not of documents."""
    checked = Checked.from_json(checked_json)
    source = checked.source
    buf: list[str] = []
    pending = 0

    def row(text: str = "", where: str = "", error: str | None = None) -> dict:
        nonlocal pending
        out = {"text": text, "_where": where, "_error": error, "_rows": pending}
        pending = 0
        return out

    def flush():
        text = "\n".join(buf).strip()
        buf.clear()
        return row(text) if len(text) >= min_chars else None

    current_file = None
    for where, rec, err in iter_records(checked):
        pending += 1
        file = where.rsplit(":", 1)[0]
        if file != current_file:
            current_file = file
            if buf and (doc := flush()):
                yield doc  # a document never spans two files
        if err or rec is None:
            yield row(where=where, error=err or "unreadable record")
            continue
        if source.text_column not in rec and "tokens" in rec:  # CoNLL: a sentence's words
            line = " ".join(rec["tokens"])
        else:
            line = rec.get(source.text_column if source.text_column in rec else "text")
            line = "" if line is None else str(line)
        if document_split == "line":
            if len(line.strip()) >= max(min_chars, 1):
                yield row(line.strip())
            continue
        if document_split == "blank_line":
            if line.strip():
                buf.append(line.strip())
            elif buf and (doc := flush()):
                yield doc
            continue
        # wikitext: an article starts at a top-level " = Title = " line; blank lines are layout
        if _TITLE.match(line.rstrip("\n")):
            if buf and (doc := flush()):
                yield doc
        if line.strip():
            buf.append(line.strip())
    if buf and (doc := flush()):
        yield doc
    if pending:
        yield row()


@dataclass
class Corpus:
    dataset: datasets.Dataset
    """Documents, one column `text`."""
    report: BadRows
    checked: Checked

    def data_report(self) -> dict:
        """data_report.json of a prepared corpus: where the text came from, records read and
        dropped (by reason, the first ten), documents and their lengths in characters."""
        import numpy as np
        import pyarrow.compute as pc

        chars = pc.utf8_length(self.dataset.data.column("text")).to_numpy()
        return {
            "source": self.report.source,
            "files": self.checked.files[:20],
            "n_files": len(self.checked.files),
            "format": self.checked.source.format,
            "format_from": self.checked.how,
            "notes": self.checked.notes,
            "rows_read": self.report.total,
            "rows_dropped": self.report.bad,
            "dropped_by_reason": dict(self.report.reasons.most_common()),
            "first_dropped": self.report.examples[:10],
            "documents": len(self.dataset),
            "document_chars": {
                **{f"p{q}": int(np.percentile(chars, q)) for q in (50, 90, 99)},
                "max": int(chars.max()),
                "total": int(chars.sum()),
            },
        }


def load_corpus(cfg: CorpusConfig) -> datasets.Dataset:
    """Documents as a `datasets.Dataset` with one column, `text` (Arrow on disk, not in memory)."""
    return read_corpus(cfg).dataset


def read_corpus(cfg: CorpusConfig) -> Corpus:
    """The corpus's documents with its bad-record report; fails above `max_bad_fraction`
    unreadable records."""
    import datasets

    checked = check_source(cfg.source, default_format="text")
    print(f"[data] corpus {checked.describe()}", flush=True)
    raw = generate(
        _documents,
        dict(
            checked_json=checked.to_json(),
            document_split=cfg.document_split,
            min_chars=cfg.min_chars,
        ),
        datasets.Features(
            {
                "text": datasets.Value("string"),
                "_where": datasets.Value("string"),
                "_error": datasets.Value("string"),
                "_rows": datasets.Value("int64"),
            }
        ),
    )
    report = report_bad_rows(raw, cfg.source.describe(), total=sum(raw["_rows"]))
    report.check(cfg.max_bad_fraction)
    ds = raw.filter(lambda t, e: e is None and t != "", input_columns=["text", "_error"])
    ds = ds.select_columns(["text"])
    if len(ds) == 0:
        raise DataError(
            f"{cfg.source.describe()}: no documents of at least {cfg.min_chars} characters"
        )
    return Corpus(ds, report, checked)
