"""The formats a data file can be in: the extensions that name them, and what proves one from
a file's first bytes. Deciding a source's format (the config, the extension, the content, the
task's default) is `lmplatform.data.sources.detect_format`; reading each format,
lmplatform.data.readers."""

from __future__ import annotations

import csv
import json
import re
from typing import Literal

import fsspec

Format = Literal["auto", "text", "csv", "tsv", "jsonl", "parquet", "conll", "conllu"]

# What a file's extension says it is (`format: auto`).
EXTENSIONS = {
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


# Formats a file's first lines can prove; "text" proves nothing (any file is text).
STRONG = ("parquet", "jsonl", "conllu", "conll", "tsv", "csv")
# Proofs that beat an extension whose format the lines also fit (JSON lines named .csv).
SPECIFIC = ("parquet", "jsonl", "conllu")
_IOB_TAG = re.compile(r"O|[BIES]-\S+")
_CONLLU_ID = re.compile(r"\d+(?:[-.]\d+)?")
_SNIFF_BYTES = 65536


def read_head(uri: str, so: dict) -> bytes:
    """The first bytes of a file: what `fits` and `sample_lines` judge it by."""
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


def fits(fmt: str, head: bytes, lines: list[str]) -> bool:
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


def sample_lines(head: bytes) -> list[str]:
    """The head's non-blank lines, at most 200 (a line the head cuts off is left out)."""
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = text.splitlines()
    if len(head) == _SNIFF_BYTES:
        lines = lines[:-1]  # the last one is cut
    return [ln for ln in lines if ln.strip()][:200]
