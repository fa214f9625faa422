"""Reading data files into records and text corpora into `datasets.Dataset`s, with bad-row
accounting (labelled task rows are built from these records by lmplatform.tasks.data).

One code path serves local files, globs and folders, remote URIs (`s3://`, `gs://`, `https://`,
anything fsspec reads, with `storage_options`), Hugging Face Hub names and the embedded sample
(`sample://…`). Line-oriented formats (text, CSV/TSV, JSON lines, CoNLL) are read by our own
readers inside `Dataset.from_generator` because every bad row must be reported with its file and
line, which `datasets`' built-in builders do not keep; parquet files and Hub datasets go through
`datasets.load_dataset` and are reported by row number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import fsspec
from pydantic import Field, model_validator

if TYPE_CHECKING:
    import datasets

from lmplatform.config import StrictModel

Format = Literal["auto", "text", "csv", "tsv", "jsonl", "parquet", "conll", "conllu"]

# `datasets` caches generator output by the generator's name and arguments, not its code: this
# key makes a new version of the readers invalidate what an old version cached.
_READER_VERSION = hashlib.sha256(open(__file__, "rb").read()).hexdigest()[:12]

_EXT = {
    ".txt": "text",
    ".text": "text",
    ".raw": "text",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".conll": "conll",
    ".conllu": "conllu",
}


class DataError(ValueError):
    """Input data that cannot be used as it is: names the file and line, or the fraction of bad rows."""


class DataSource(StrictModel):
    path: str | None = None
    """Local file, folder or glob; a remote URI (s3://, gs://, https://…); or sample://<file>."""
    hub_name: str | None = None
    """A Hugging Face Hub dataset name (e.g. 'wikitext'), instead of `path`."""
    hub_subset: str | None = None
    """Hub dataset configuration (e.g. 'wikitext-103-raw-v1')."""
    split: str = "train"
    """Hub split to read."""
    format: Format = "auto"
    """File format; 'auto' picks it from the extension (.txt .csv .tsv .jsonl .parquet .conll
    .conllu)."""
    header: bool = True
    """CSV/TSV: the first row holds column names. If false, `columns` names them."""
    columns: list[str] | None = None
    """CSV/TSV without a header: the column names, in order."""
    text_column: str = "text"
    """Column holding the text (or the first text of a pair)."""
    text_pair_column: str | None = None
    """Column holding the second text, for sentence-pair tasks."""
    label_column: str = "label"
    """Column holding the label."""
    target_path: str | None = None
    """Parallel text (seq2seq) in two files: the target side, line i translating line i of
    `path` (both plain text, or the same globs/folders in the same order)."""
    target_column: str = "target"
    """Column holding the target text (seq2seq), in a TSV/CSV/JSONL of pairs."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """Passed to fsspec for remote URIs (credentials, endpoint, anon=True, …)."""

    @model_validator(mode="after")
    def _one_origin(self) -> DataSource:
        if (self.path is None) == (self.hub_name is None):
            raise ValueError("set exactly one of path (files or URI) and hub_name (Hub dataset)")
        if not self.header and not self.columns and self.format in ("csv", "tsv"):
            raise ValueError("header: false needs `columns` (the column names in order)")
        if self.target_path is not None and (
            self.path is None or self.format not in ("auto", "text")
        ):
            raise ValueError(
                "target_path pairs two plain-text files line by line: it needs `path` (the "
                "source side) and format auto or text"
            )
        return self

    def describe(self) -> str:
        if self.hub_name:
            return (
                f"hub:{self.hub_name}"
                + (f"/{self.hub_subset}" if self.hub_subset else "")
                + f"[{self.split}]"
            )
        return str(self.path)


class CorpusConfig(StrictModel):
    source: DataSource
    """Where the raw text is."""
    document_split: Literal["line", "blank_line", "wikitext"] = "blank_line"
    """How rows become documents: each row ('line'), runs of lines separated by blank lines
    ('blank_line'), or WikiText articles that start at ' = Title = ' lines ('wikitext')."""
    min_chars: int = Field(20, ge=0)
    """Documents shorter than this are dropped."""


# --------------------------------------------------------------------------- files


def resolve_files(source: DataSource) -> list[str]:
    """Expand a path, folder or glob (local or remote) into a sorted list of file URIs."""
    from lmplatform.data.sample import resolve_sample_uri

    path = resolve_sample_uri(source.path)
    try:
        fs, _, paths = fsspec.get_fs_token_paths(path, storage_options=source.storage_options)
    except ImportError as e:
        from lmplatform.storage import CLOUD_EXTRA

        raise DataError(
            f"{source.path}: the filesystem for this URI is not installed ({e}); install the "
            f"cloud extra: {CLOUD_EXTRA}"
        ) from None
    files: list[str] = []
    for p in paths:
        if fs.isdir(p):
            files += sorted(f for f in fs.find(p) if not os.path.basename(f).startswith((".", "_")))
        elif fs.exists(p):
            files.append(p)
    if not files:
        raise DataError(f"{source.path}: no such file (or the glob/folder matched no files)")
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol not in ("file", "local"):
        files = [f if "://" in f else f"{protocol}://{f}" for f in files]
    return files


def detect_format(source: DataSource, files: list[str]) -> str:
    if source.format != "auto":
        return source.format
    if source.target_path is not None:
        return "text"  # two aligned files: one sentence per line, whatever the extension (.de)
    exts = {os.path.splitext(f.split("?")[0])[1].lower() for f in files}
    fmts = {_EXT.get(e) for e in exts}
    if len(fmts) != 1 or None in fmts:
        raise DataError(
            f"{source.path}: cannot tell the format from extensions {sorted(exts)}; "
            f"set format to one of text, csv, tsv, jsonl, parquet, conll, conllu"
        )
    return fmts.pop()


def fingerprint(source: DataSource, files: list[str] | None = None) -> str:
    """Identity of the data: file names with size and modification time or ETag, or the Hub name.

    Cheap for terabyte corpora (no content read), and it changes whenever a file does.
    """
    h = hashlib.sha256()
    if source.hub_name:
        h.update(source.describe().encode())
    else:
        from lmplatform.data.sample import resolve_sample_uri

        fs, _, _ = fsspec.get_fs_token_paths(
            resolve_sample_uri(source.path), storage_options=source.storage_options
        )
        for f in files if files is not None else resolve_files(source):
            info = fs.info(f)
            stamp = (
                info.get("ETag")
                or info.get("etag")
                or info.get("mtime")
                or info.get("LastModified")
            )
            h.update(f"{f}|{info.get('size')}|{stamp}\n".encode())
    h.update(source.model_dump_json(exclude={"storage_options"}).encode())
    return h.hexdigest()[:16]


def checked_fingerprint(source: DataSource) -> str:
    """Fail on a missing file, unknown format or misaligned parallel files here, not deep
    inside `datasets`' generator."""
    files = None
    if not source.hub_name:
        files = resolve_files(source)
        detect_format(source, files)
    fp = fingerprint(source, files)
    if source.target_path is not None:
        target = _target_side(source)
        target_files = resolve_files(target)
        _check_aligned(files, target_files, source.storage_options)
        fp += fingerprint(target, target_files)[:8]
    return f"{fp}-{_READER_VERSION}"


def _target_side(source: DataSource) -> DataSource:
    return DataSource(
        path=source.target_path, format="text", storage_options=source.storage_options
    )


def _count_lines(files: list[str], so: dict) -> list[int]:
    counts = []
    for f in files:
        with _open_text(f, so) as fh:
            counts.append(sum(1 for _ in fh))
    return counts


def _check_aligned(src: list[str], tgt: list[str], so: dict) -> None:
    """Parallel files must pair up file by file and line by line: a missing or extra line
    shifts every pair after it, which no per-row check could catch."""
    if len(src) != len(tgt):
        raise DataError(
            f"parallel text: {len(src)} source file(s) but {len(tgt)} target file(s) "
            f"({', '.join(src[:3])} vs {', '.join(tgt[:3])})"
        )
    for a, b, na, nb in zip(src, tgt, _count_lines(src, so), _count_lines(tgt, so)):
        if na != nb:
            raise DataError(
                f"parallel text is misaligned: {a} has {na} lines but {b} has {nb}; line i of "
                f"one must translate line i of the other (a missing or extra line shifts "
                f"every pair after it)"
            )


def _open_text(uri: str, storage_options: dict):
    return fsspec.open(uri, "rt", encoding="utf-8", errors="strict", newline="", **storage_options)


# --------------------------------------------------------------------------- records
# A record reader yields (where, record, error): `where` is "file:line" (or "name row N"),
# `record` a dict of columns, `error` None or why the row is unusable.


def _iter_text(files: list[str], so: dict) -> Iterator[tuple[str, dict | None, str | None]]:
    for f in files:
        with _open_text(f, so) as fh:
            for n, line in enumerate(fh, 1):
                yield f"{f}:{n}", {"text": line.rstrip("\r\n")}, None


def _iter_delimited(
    files: list[str], so: dict, delimiter: str, header: bool, columns: list[str] | None
) -> Iterator[tuple[str, dict | None, str | None]]:
    # TSV files in NLP (SST-2, AG News) are not quoted: a '"' is part of the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    for f in files:
        with _open_text(f, so) as fh:
            reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
            names = columns
            if header:
                try:
                    names = [c.strip() for c in next(reader)]
                except StopIteration:
                    continue
            for row in reader:
                where = f"{f}:{reader.line_num}"
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != len(names):
                    yield (
                        where,
                        None,
                        f"expected {len(names)} columns ({', '.join(names)}), found {len(row)}",
                    )
                    continue
                yield where, dict(zip(names, row)), None


def _iter_jsonl(files: list[str], so: dict) -> Iterator[tuple[str, dict | None, str | None]]:
    for f in files:
        with _open_text(f, so) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{f}:{n}", None, f"invalid JSON ({e.msg})"
                    continue
                if not isinstance(rec, dict):
                    yield f"{f}:{n}", None, "not a JSON object"
                    continue
                yield f"{f}:{n}", rec, None


def _iter_arrow(
    source: DataSource, files: list[str] | None
) -> Iterator[tuple[str, dict | None, str | None]]:
    import datasets

    if source.hub_name:
        ds = datasets.load_dataset(
            source.hub_name, source.hub_subset, split=source.split, streaming=True
        )
        name = source.describe()
    else:
        ds = datasets.load_dataset(
            "parquet",
            data_files=files,
            split="train",
            streaming=True,
            storage_options=source.storage_options,
        )
        name = str(source.path)
    for n, rec in enumerate(ds):
        yield f"{name} row {n}", rec, None


def _iter_conll(files: list[str], so: dict) -> Iterator[tuple[str, dict | None, str | None]]:
    """Sentences from `word … tag` lines; a blank line ends a sentence; -DOCSTART- is skipped."""
    for f in files:
        with _open_text(f, so) as fh:
            tokens: list[str] = []
            tags: list[str] = []
            start = 0
            error: str | None = None
            for n, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    if tokens or error:
                        yield f"{f}:{start}", {"tokens": tokens, "tags": tags}, error
                    tokens, tags, error = [], [], None
                    continue
                if parts[0] == "-DOCSTART-":
                    continue
                if not tokens and error is None:
                    start = n
                if len(parts) < 2:
                    if error is None:
                        error = f"line {n}: expected 'word … tag', found {line.strip()!r}"
                        start = n
                    continue
                tokens.append(parts[0])
                tags.append(parts[-1])
            if tokens or error:
                yield f"{f}:{start}", {"tokens": tokens, "tags": tags}, error


def _iter_conllu(files: list[str], so: dict) -> Iterator[tuple[str, dict | None, str | None]]:
    """CoNLL-U sentences: the words (column 2) and, per word, the columns after the tenth
    (Universal Propositions: the predicate sense, then one argument column per predicate).
    Comment lines, multiword-token ranges (`1-2`) and empty nodes (`8.1`) are skipped."""
    for f in files:
        with _open_text(f, so) as fh:
            words: list[str] = []
            extra: list[list[str]] = []
            start, error = 0, None
            for n, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    if words or error:
                        yield f"{f}:{start}", {"tokens": words, "columns": extra}, error
                    words, extra, error = [], [], None
                    continue
                if line.startswith("#"):
                    continue
                if not words and error is None:
                    start = n
                parts = line.split("\t")
                if len(parts) < 10:
                    if error is None:
                        error = f"line {n}: expected 10 or more tab-separated columns, found {len(parts)}"
                    continue
                if "-" in parts[0] or "." in parts[0]:
                    continue
                words.append(parts[1])
                extra.append(parts[10:])
            if words or error:
                yield f"{f}:{start}", {"tokens": words, "columns": extra}, error


def _iter_parallel(
    files: list[str], target_files: list[str], so: dict, column: str, target_column: str
) -> Iterator[tuple[str, dict | None, str | None]]:
    for a, b in zip(files, target_files):
        with _open_text(a, so) as fa, _open_text(b, so) as fb:
            for n, (x, y) in enumerate(zip(fa, fb), 1):
                yield f"{a}:{n}", {column: x.rstrip("\r\n"), target_column: y.rstrip("\r\n")}, None


def iter_records(source: DataSource) -> Iterator[tuple[str, dict | None, str | None]]:
    if source.hub_name:
        yield from _iter_arrow(source, None)
        return
    files = resolve_files(source)
    fmt = detect_format(source, files)
    so = source.storage_options
    if source.target_path is not None:
        target = resolve_files(_target_side(source))
        yield from _iter_parallel(files, target, so, source.text_column, source.target_column)
    elif fmt == "text":
        yield from _iter_text(files, so)
    elif fmt in ("csv", "tsv"):
        yield from _iter_delimited(
            files, so, "\t" if fmt == "tsv" else ",", source.header, source.columns
        )
    elif fmt == "jsonl":
        yield from _iter_jsonl(files, so)
    elif fmt == "parquet":
        yield from _iter_arrow(source, files)
    elif fmt == "conllu":
        yield from _iter_conllu(files, so)
    else:
        yield from _iter_conll(files, so)


# --------------------------------------------------------------------------- bad rows


@dataclass
class BadRows:
    """Counts of unusable rows by reason, with the first few locations for the user to look at."""

    source: str
    total: int = 0
    bad: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.bad / self.total if self.total else 0.0

    def summary(self) -> str:
        if not self.bad:
            return f"{self.source}: {self.total} rows, none bad"
        by = ", ".join(f"{r}: {c}" for r, c in self.reasons.most_common())
        first = "; ".join(self.examples[:5])
        return f"{self.source}: {self.bad} of {self.total} rows bad ({self.fraction:.2%}) [{by}]; first: {first}"

    def check(self, max_fraction: float) -> None:
        if self.total == 0:
            raise DataError(f"{self.source}: no rows found")
        if self.fraction > max_fraction:
            raise DataError(
                f"too many bad rows (limit {max_fraction:.2%}, set max_bad_fraction to allow more): "
                + self.summary()
            )


_REASONS = (
    ("line ", "malformed line"),
    ("expected ", "wrong number of columns"),
    ("invalid JSON", "invalid JSON"),
    ("not a JSON", "invalid JSON"),
    ("missing column", "missing column"),
    ("missing label", "missing label"),
    ("unknown label", "unknown label"),
    ("empty source", "empty source side"),
    ("empty target", "empty target side"),
    ("empty", "empty text"),
    ("length ratio outlier", "length ratio outlier"),
    ("argument column", "malformed predicate"),
)


def _reason(err: str) -> str:
    return next((name for prefix, name in _REASONS if err.startswith(prefix)), "bad row")


def report_bad_rows(ds: datasets.Dataset, source: str) -> BadRows:
    """Bad-row report of a dataset with `_where` and `_error` columns."""
    rep = BadRows(source=source, total=len(ds))
    for where, err in zip(ds["_where"], ds["_error"]):
        if err:
            rep.bad += 1
            rep.reasons[_reason(err)] += 1
            if len(rep.examples) < 20:
                rep.examples.append(f"{where}: {err}")
    return rep


# --------------------------------------------------------------------------- corpora


_TITLE = re.compile(r"^ = [^=].* = $")


def _documents(source_json: str, document_split: str, min_chars: int, fingerprint: str):
    """Generator for `Dataset.from_generator`; `fingerprint` is only there to key the cache."""
    source = DataSource.model_validate_json(source_json)
    buf: list[str] = []

    def flush():
        text = "\n".join(buf).strip()
        buf.clear()
        if len(text) >= min_chars:
            return {"text": text}
        return None

    current_file = None
    for where, rec, err in iter_records(source):
        file = where.rsplit(":", 1)[0]
        if file != current_file:
            current_file = file
            if buf and (doc := flush()):
                yield doc  # a document never spans two files
        if err or rec is None:
            continue
        if source.text_column not in rec and "tokens" in rec:  # CoNLL: a sentence's words
            line = " ".join(rec["tokens"])
        else:
            line = rec.get(source.text_column if source.text_column in rec else "text")
            line = "" if line is None else str(line)
        if document_split == "line":
            if len(line.strip()) >= max(min_chars, 1):
                yield {"text": line.strip()}
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


def load_corpus(cfg: CorpusConfig) -> datasets.Dataset:
    """Documents as a `datasets.Dataset` with one column, `text` (Arrow on disk, not in memory)."""
    import datasets

    fp = checked_fingerprint(cfg.source)
    ds = datasets.Dataset.from_generator(
        _documents,
        gen_kwargs=dict(
            source_json=cfg.source.model_dump_json(),
            document_split=cfg.document_split,
            min_chars=cfg.min_chars,
            fingerprint=fp,
        ),
    )
    if len(ds) == 0:
        raise DataError(
            f"{cfg.source.describe()}: no documents of at least {cfg.min_chars} characters"
        )
    return ds
