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
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    """Fail if more than this fraction of records (lines, rows, sentences) is unreadable."""


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


# Formats a file's first lines can prove; "text" proves nothing (any file is text).
_STRONG = ("parquet", "jsonl", "conllu", "conll", "tsv", "csv")
_SPECIFIC = ("parquet", "jsonl", "conllu")
_IOB_TAG = re.compile(r"O|[BIES]-\S+")
_CONLLU_ID = re.compile(r"\d+(?:[-.]\d+)?")
_SNIFF_BYTES = 65536


def _head(uri: str, so: dict) -> bytes:
    with fsspec.open(uri, "rb", **so) as fh:
        return fh.read(_SNIFF_BYTES)


def _json_object_line(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
    except (ValueError, RecursionError):
        # valid JSON that Python cannot hold (a 5,000-digit number, deep nesting): still JSON
        # lines; the reader reports the line as a bad row
        return line.lstrip().startswith("{")


def _fits(fmt: str, head: bytes, lines: list[str]) -> bool:
    """Whether the first lines of a file read as `fmt` (lines: non-blank, at most 200)."""
    if fmt == "parquet":
        return head.startswith(b"PAR1")
    if not lines or head.startswith(b"PAR1"):
        return False
    if fmt == "jsonl":
        return all(_json_object_line(ln) for ln in lines[:20])
    if fmt == "conllu":
        words = [ln.split("\t") for ln in lines if not ln.startswith("#")]
        return bool(words) and all(len(w) >= 10 and _CONLLU_ID.fullmatch(w[0]) for w in words)
    if fmt == "conll":
        if lines[0].startswith("-DOCSTART-"):
            return True
        fields = [ln.split() for ln in lines]
        tagged = sum(bool(_IOB_TAG.fullmatch(f[-1])) for f in fields if len(f) >= 2)
        return all(2 <= len(f) <= 12 for f in fields) and tagged >= 0.9 * len(fields)
    if fmt == "tsv":
        tabs = {ln.count("\t") for ln in lines}
        return len(tabs) == 1 and tabs != {0}
    if fmt == "csv":
        try:
            widths = {len(row) for row in csv.reader(lines)}
        except csv.Error:
            return False
        return len(widths) == 1 and widths != {1}
    return True  # text


def _sample_lines(head: bytes) -> list[str]:
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = text.splitlines()
    if len(head) == _SNIFF_BYTES:
        lines = lines[:-1]  # the last one is cut
    return [ln for ln in lines if ln.strip()][:200]


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
    by_ext = {_EXT.get(e) for e in exts} - {None, "text"}
    if len(by_ext) > 1:
        raise DataError(
            f"{source.path}: files of different formats ({', '.join(exts)}); point `path` at "
            "one format, or set `format`"
        )
    ext_fmt = by_ext.pop() if by_ext else None
    if head is None:
        head = _head(files[0], source.storage_options)
    lines = _sample_lines(head)
    if lines and lines[0].lstrip().startswith("[") and ext_fmt in (None, "jsonl"):
        raise DataError(
            f"{files[0]}: a JSON array; write one JSON object per line (JSON lines) instead"
        )
    ext_name = f"the {exts[0]} extension" if len(exts) == 1 else f"the {'/'.join(exts)} extensions"
    # formats the first lines prove beyond doubt come first: a JSON object per line is JSON
    # lines even in a file named .csv (where it would also split into a consistent 2 fields)
    content = next((f for f in _STRONG if _fits(f, head, lines)), None)
    if ext_fmt is not None and _fits(ext_fmt, head, lines) and content not in _SPECIFIC:
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
    if default == "text" and "text" in {_EXT.get(e) for e in exts}:
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
    head = _head(files[0], source.storage_options)  # read once: format and byte-order mark
    fmt, how = detect_format(source, files, default_format, head)
    notes = []
    if fmt != "parquet" and head.startswith(b"\xef\xbb\xbf"):
        notes.append(f"{files[0]} starts with a UTF-8 byte-order mark (Excel writes one): dropped")
    decided = source.model_copy(update={"format": fmt})
    fp = fingerprint(decided, files)
    if source.target_path is not None:
        target = _target_side(source)
        target_files = resolve_files(target)
        _check_aligned(files, target_files, source.storage_options)
        fp += fingerprint(target, target_files)[:8]
    return Checked(decided, files, how, f"{fp}-{_READER_VERSION}", notes)


def _target_side(source: DataSource) -> DataSource:
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


def _lines(uri: str, so: dict) -> Iterator[tuple[int, str, str | None]]:
    """(line number, line with its end, None or why it is unusable) for each physical line.

    Lines are decoded one by one so that bytes that are not UTF-8 are reported at their own
    line (a text stream fails at a buffer boundary, without a line, and ends the file); a
    UTF-8 byte-order mark (Excel writes one) is dropped."""
    with fsspec.open(uri, "rb", **so) as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line, err = raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                line = raw.decode("utf-8", errors="replace")
                err = (
                    f"not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line "
                    "(re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8)"
                )
            if n == 1:
                line = line.removeprefix("\ufeff")
            yield n, line, err


# --------------------------------------------------------------------------- records
# A record reader yields (where, record, error): `where` is "file:line" (or "name row N"),
# `record` a dict of columns, `error` None or why the row is unusable. A file that cannot be
# read at all (header-only, an unreadable header) raises DataError naming it.


def _iter_text(files: list[str], so: dict) -> Iterator[tuple[str, dict | None, str | None]]:
    for f in files:
        for n, line, err in _lines(f, so):
            yield f"{f}:{n}", None if err else {"text": line.rstrip("\r\n")}, err


def _decoded_lines(f: str, so: dict, undecodable: dict[int, str]) -> Iterator[str]:
    """The file's lines for csv.reader, noting which ones are not UTF-8 (by line number)."""
    for n, line, err in _lines(f, so):
        if err:
            undecodable[n] = err
        yield line


def _csv_why(e: csv.Error) -> str:
    return str(e).split(" - ")[0]


def _read_header(f: str, reader, undecodable: dict[int, str]) -> list[str]:
    try:
        first, why = next(reader, []), None
    except csv.Error as e:
        first, why = [], _csv_why(e)
    if reader.line_num > 1:  # a quote opened in the header: the rows after it would be lost
        raise DataError(
            f"{f}:1: the header runs over lines 1-{reader.line_num} (a stray or unclosed quote)"
        )
    names = [c.strip() for c in first]
    if why or undecodable or not any(names):
        raise DataError(f"{f}:1: no readable header ({why or undecodable.get(1, 'blank')})")
    if len(set(names)) != len(names):
        raise DataError(f"{f}:1: repeated column names in the header {names}")
    return names


def _csv_records(reader) -> Iterator[tuple[int, int, list[str] | None, str | None]]:
    """(first line, last line, fields or None, None or why csv refused it) for every record,
    so that each physical line is in exactly one span. A csv.Error still consumed lines: a
    stray quote runs until csv's field limit (131,072 characters, thousands of lines) and
    raises there, and those lines must count as bad, not vanish."""
    end = reader.line_num
    while True:
        start = end + 1
        try:
            row, why = next(reader, None), None
        except csv.Error as e:  # the field limit, a carriage return inside an unquoted field
            row, why = None, _csv_why(e)
        end = reader.line_num
        if row is None and why is None:
            return
        yield start, end, row, why


def _delimited_row(
    f: str,
    start: int,
    end: int,
    row: list[str] | None,
    why: str | None,
    names: list[str],
    undecodable: dict[int, str],
) -> Iterator[tuple[str, dict | None, str | None]]:
    """One record of a CSV/TSV file as rows: the record, or one bad row per line it spans."""
    where = f"{f}:{start}"
    if end > start:
        # a quote opened and closed (or hit the field limit or the end of the file) lines later:
        # everything between became one field (600 rows silently merged into one, if it were
        # counted as one row)
        yield (
            where,
            None,
            f"a quoted field runs over lines {start}-{end} (a stray or unclosed quote, or a "
            "line break inside a field)" + (f"; csv: {why}" if why else ""),
        )
        for n in range(start + 1, end + 1):
            undecodable.pop(n, None)
            yield f"{f}:{n}", None, f"swallowed by the quoted field opened at line {start}"
    elif why is not None:
        yield where, None, f"line {start}: not valid CSV ({why})"
    elif start in undecodable:
        yield where, None, undecodable.pop(start)
    elif len(row) != len(names):
        yield where, None, f"expected {len(names)} columns ({', '.join(names)}), found {len(row)}"
    else:
        yield where, dict(zip(names, row)), None


def _iter_delimited(
    files: list[str], so: dict, delimiter: str, header: bool, columns: list[str] | None
) -> Iterator[tuple[str, dict | None, str | None]]:
    # TSV files in NLP (SST-2, AG News) are not quoted: a '"' is part of the text.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    for f in files:
        undecodable: dict[int, str] = {}
        lines = _decoded_lines(f, so, undecodable)
        reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
        names = _read_header(f, reader, undecodable) if header else columns
        rows = 0
        for start, end, row, why in _csv_records(reader):
            if row is not None and (not row or (len(row) == 1 and not row[0].strip())):
                continue  # blank line
            rows += 1
            yield from _delimited_row(f, start, end, row, why, names, undecodable)
        if rows == 0:
            raise DataError(
                f"{f}: a header and no rows" if header else f"{f}: no rows (only blank lines)"
            )


# a \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or the second without the first
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _json_record(line: str) -> tuple[dict | None, str | None]:
    """A JSON line as a dict, or why it is not one. Valid JSON that Python cannot hold is
    invalid too: json raises ValueError (not JSONDecodeError) for an integer of more than
    `sys.get_int_max_str_digits()` digits, RecursionError for deep nesting, and a lone surrogate
    escape decodes to a string that Arrow cannot write (a crash later, naming no line)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg})"
    except ValueError as e:
        return None, f"invalid JSON ({str(e).split(';')[0]})"
    except RecursionError:
        return None, f"invalid JSON (nested too deeply for Python: {line.strip()[:40]}…)"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    if (m := _LONE_SURROGATE.search(line)) is not None:
        try:  # the pattern may sit in an escaped backslash ("\\\\ud800"): the text decides
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, f"invalid JSON (a lone surrogate {m.group()} is not a character)"
    return rec, None


def _iter_jsonl(files: list[str], so: dict) -> Iterator[tuple[str, dict | None, str | None]]:
    for f in files:
        for n, line, err in _lines(f, so):
            if err:
                yield f"{f}:{n}", None, err
            elif line.strip():
                rec, err = _json_record(line)
                yield f"{f}:{n}", rec, err


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
    """Sentences from `word … tag` lines; a blank line ends a sentence; -DOCSTART- is skipped.
    A sentence with a malformed or undecodable line is one bad row, reported at that line."""
    for f in files:
        tokens: list[str] = []
        tags: list[str] = []
        start, error = 0, None
        for n, line, bad in _lines(f, so):
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
            if bad or len(parts) < 2:
                if error is None:
                    error = f"line {n}: " + (
                        bad or f"expected 'word … tag', found {line.strip()!r}"
                    )
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
        words: list[str] = []
        extra: list[list[str]] = []
        start, error = 0, None
        for n, line, bad in _lines(f, so):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words or error:
                    yield f"{f}:{start}", {"tokens": words, "columns": extra}, error
                words, extra, error = [], [], None
                continue
            if line.startswith("#") and not bad:
                continue
            if not words and error is None:
                start = n
            parts = line.split("\t")
            if bad or len(parts) < 10:
                if error is None:
                    error = f"line {n}: " + (
                        bad or f"expected 10 or more tab-separated columns, found {len(parts)}"
                    )
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
        for (n, x, bad_x), (_, y, bad_y) in zip(_lines(a, so), _lines(b, so)):
            if bad_x or bad_y:
                yield f"{a}:{n}", None, bad_x or f"{b}:{n}: {bad_y}"
                continue
            yield f"{a}:{n}", {column: x.rstrip("\r\n"), target_column: y.rstrip("\r\n")}, None


def iter_records(checked: Checked) -> Iterator[tuple[str, dict | None, str | None]]:
    """Every record of a checked source (its format decided), in file and line order."""
    source, files = checked.source, checked.files
    if source.hub_name:
        yield from _iter_arrow(source, None)
        return
    fmt = source.format
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
    ("not UTF-8", "not UTF-8"),
    ("line ", "malformed line"),
    ("a quoted field", "quoted field over several lines"),
    ("swallowed by", "quoted field over several lines"),
    ("tokens and tags differ", "tokens and tags differ in length"),
    ("tokens and tags must", "tokens or tags not word lists"),
    ("expected ", "wrong number of columns"),
    ("invalid JSON", "invalid JSON"),
    ("not a JSON", "invalid JSON"),
    ("missing column", "missing column"),
    ("missing label", "missing label"),
    ("bad label", "bad label"),
    ("text is not", "text not a string"),
    ("text pair is not", "text not a string"),
    ("unknown label", "unknown label"),
    ("empty source", "empty source side"),
    ("empty target", "empty target side"),
    ("empty", "empty text"),
    ("length ratio outlier", "length ratio outlier"),
    ("argument column", "malformed predicate"),
)


def _reason(err: str) -> str:
    if "not UTF-8" in err:  # also inside a sentence ("line 12: not UTF-8 …")
        return "not UTF-8"
    return next((name for prefix, name in _REASONS if err.startswith(prefix)), "bad row")


def report_bad_rows(ds: datasets.Dataset, source: str, total: int | None = None) -> BadRows:
    """Bad-row report of a dataset with `_where` and `_error` columns (`total`: rows read,
    when a dataset row can stand for several)."""
    rep = BadRows(source=source, total=len(ds) if total is None else total)
    bad = ds.filter(lambda e: e is not None, input_columns="_error")
    for where, err in zip(bad["_where"], bad["_error"]):
        rep.bad += 1
        rep.reasons[_reason(err)] += 1
        # the lines a runaway quote swallowed are counted; the row that opened it is shown
        if len(rep.examples) < 20 and not err.startswith("swallowed by"):
            rep.examples.append(f"{where}: {err}")
    return rep


# --------------------------------------------------------------------------- corpora


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


def generate(gen, gen_kwargs: dict, features: datasets.Features) -> datasets.Dataset:
    """`Dataset.from_generator` (rows written to Arrow on disk, cached by `gen_kwargs`), with a
    DataError from a reader (a file that cannot be read at all) raised as itself: `datasets`
    wraps it in a DatasetGenerationError that names no file."""
    import datasets

    try:
        return datasets.Dataset.from_generator(gen, gen_kwargs=gen_kwargs, features=features)
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


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
