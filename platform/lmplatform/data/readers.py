"""Reading a checked data source's records (`iter_records`), and writing them to a
`datasets.Dataset` (`generate`).

Line-oriented formats (text, CSV/TSV, JSON lines, CoNLL) are read by our own readers inside
`Dataset.from_generator` because every bad row must be reported with its file and line, which
`datasets`' built-in builders do not keep; parquet files and Hub datasets go through
`datasets.load_dataset` and are reported by row number.

A record reader yields (where, record, error): `where` is "file:line" (or "name row N"),
`record` a dict of columns, `error` None or why the row is unusable. A file that cannot be read
at all (header-only, an unreadable header) raises DataError naming it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import fsspec

if TYPE_CHECKING:
    import datasets

from lmplatform.data.sources import Checked, DataError, DataSource, resolve_files, target_side


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
        target = resolve_files(target_side(source))
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
