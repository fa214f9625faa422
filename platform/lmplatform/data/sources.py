"""Data sources: where data is, which files that names, which format they are in, and the
checks before any row is read (`check_source`).

One code path serves local files, globs and folders, remote URIs (`s3://`, `gs://`, `https://`,
anything fsspec reads, with `storage_options`), Hugging Face Hub names and the embedded sample
(`sample://…`). Reading a checked source's records is lmplatform.data.readers; bad-row
accounting lmplatform.data.badrows; text corpora lmplatform.data.corpus; labelled task rows
lmplatform.tasks.data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
from pydantic import Field, model_validator

from lmplatform.config import StrictModel
from lmplatform.data.formats import (
    EXTENSIONS,
    SPECIFIC,
    STRONG,
    Format,
    fits,
    read_head,
    sample_lines,
)

# `datasets` caches generator output by the generator's name and arguments, not its code. This
# key ends every Checked fingerprint, which the generators get as an argument, so that a new
# version of the code that turns files into rows invalidates what an old version cached. It
# hashes every module of this package that decides those rows: this one (the files, the target
# side of parallel text), formats.py (the format, hence the reader), readers.py (the records)
# and corpus.py (the documents). Not badrows.py (it counts rows after they are cached) nor
# sample.py (its files are fingerprinted like any other). The files are read by name because
# readers.py and corpus.py import this module; a new module of reading code joins this list
# (tests/data/test_sources.py fails on a module of the package that is in neither). Labelled task
# rows add their own code's hash (lmplatform.tasks.data).
READING_CODE = ("sources.py", "formats.py", "readers.py", "corpus.py")


def _code_hash(names: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in names:
        with open(os.path.join(os.path.dirname(__file__), name), "rb") as fh:
            h.update(name.encode() + b"\0" + fh.read())
    return h.hexdigest()[:12]


_READER_VERSION = _code_hash(READING_CODE)


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


def detect_format(
    source: DataSource, files: list[str], default: str | None = None, head: bytes | None = None
) -> tuple[str, str]:
    """(format, how it was decided). An explicit format is taken as it is. For `auto`, the
    first file's first lines decide between what the extension says and what they prove:
    the extension when they fit it, else the format they do fit (a CoNLL file named .txt, a
    JSON-lines file named .json); `default` (the task's usual format) when they prove nothing
    and the extension says nothing either."""
    if source.format != "auto":
        return source.format, "the config"
    if source.target_path is not None:
        return "text", "two aligned files, one sentence per line"
    exts = sorted({os.path.splitext(f.split("?")[0])[1].lower() for f in files})
    by_ext = {EXTENSIONS.get(e) for e in exts} - {None, "text"}
    if len(by_ext) > 1:
        raise DataError(
            f"{source.path}: files of different formats ({', '.join(exts)}); point `path` at "
            "one format, or set `format`"
        )
    ext_fmt = by_ext.pop() if by_ext else None
    if head is None:
        head = read_head(files[0], source.storage_options)
    lines = sample_lines(head)
    if lines and lines[0].lstrip().startswith("[") and ext_fmt in (None, "jsonl"):
        raise DataError(
            f"{files[0]}: a JSON array; write one JSON object per line (JSON lines) instead"
        )
    ext_name = f"the {exts[0]} extension" if len(exts) == 1 else f"the {'/'.join(exts)} extensions"
    # formats the first lines prove beyond doubt come first: a JSON object per line is JSON
    # lines even in a file named .csv (where it would also split into a consistent 2 fields)
    content = next((f for f in STRONG if fits(f, head, lines)), None)
    if ext_fmt is not None and fits(ext_fmt, head, lines) and content not in SPECIFIC:
        return ext_fmt, f"{ext_name}; the content agrees"
    if content is not None:
        if content == ext_fmt:
            return ext_fmt, f"{ext_name}; the content agrees"
        if ext_fmt is None:
            return content, f"its content: the first lines read as {content}"
        return content, (
            f"its content: the first lines read as {content}, not {ext_fmt} as {ext_name} says"
        )
    if ext_fmt is not None:
        return ext_fmt, f"{ext_name}; the first lines prove no format"
    if default == "text" and "text" in {EXTENSIONS.get(e) for e in exts}:
        return "text", ext_name  # a corpus in .txt files
    if default is not None:
        return default, f"the task's default ({default}); neither {ext_name} nor the content tell"
    raise DataError(
        f"{source.path}: cannot tell the format from {ext_name} or the content; set format to "
        "one of text, csv, tsv, jsonl, parquet, conll, conllu"
    )


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


@dataclass
class Checked:
    """A data source checked before any row is read: the format decided (and how), the files,
    and the fingerprint that keys cached rows."""

    source: DataSource
    """The source with `format` decided (readers never guess again)."""
    files: list[str]
    how: str
    """How the format was decided, for the log and the data report."""
    fingerprint: str
    notes: list[str] = field(default_factory=list)
    """What the user should know about the files (a byte-order mark dropped, …)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source.model_dump(mode="json"),
                "files": self.files,
                "how": self.how,
                "fingerprint": self.fingerprint,
                "notes": self.notes,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Checked:
        d = json.loads(text)
        return cls(DataSource.model_validate(d.pop("source")), **d)

    def describe(self) -> str:
        if self.source.hub_name:
            return f"{self.source.describe()} (Hub dataset)"
        n = len(self.files)
        files = self.files[0] if n == 1 else f"{n} files ({self.files[0]}, …)"
        notes = "".join(f"; {n}" for n in self.notes)
        return f"{files}: format {self.source.format} (from {self.how}){notes}"


def check_source(source: DataSource, default_format: str | None = None) -> Checked:
    """Fail on a missing or empty file, an unknown format or misaligned parallel files here,
    before any compute, not deep inside `datasets`' generator."""
    if source.hub_name:
        return Checked(source, [], "the Hub", f"{fingerprint(source)}-{_READER_VERSION}")
    files = resolve_files(source)
    fs, _, _ = fsspec.get_fs_token_paths(files[0], storage_options=source.storage_options)
    for f in files:
        if fs.size(f) == 0:
            raise DataError(f"{f}: the file is empty")
    head = read_head(files[0], source.storage_options)  # read once: format and byte-order mark
    fmt, how = detect_format(source, files, default_format, head)
    notes = []
    if fmt != "parquet" and head.startswith(b"\xef\xbb\xbf"):
        notes.append(f"{files[0]} starts with a UTF-8 byte-order mark (Excel writes one): dropped")
    decided = source.model_copy(update={"format": fmt})
    fp = fingerprint(decided, files)
    if source.target_path is not None:
        target = target_side(source)
        target_files = resolve_files(target)
        _check_aligned(files, target_files, source.storage_options)
        fp += fingerprint(target, target_files)[:8]
    return Checked(decided, files, how, f"{fp}-{_READER_VERSION}", notes)


def target_side(source: DataSource) -> DataSource:
    """The target side of parallel text (`target_path`), as a plain-text source."""
    return DataSource(
        path=source.target_path, format="text", storage_options=source.storage_options
    )


def _count_lines(files: list[str], so: dict) -> list[int]:
    counts = []
    for f in files:
        with fsspec.open(f, "rb", **so) as fh:
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
