"""Hostile input files, generated here, each against the documented outcome: a bad-row count
with `file:line: reason`, or one DataError line naming the file. Nothing passes silently."""

from __future__ import annotations

import json
import re

import pytest

from lmplatform.data.corpus import CorpusConfig, load_corpus
from lmplatform.data.sources import DataError, DataSource
from lmplatform.tasks.data import load_labelled

ROWS = 1000


def _tsv_rows(n: int = ROWS) -> list[str]:
    return [f"sentence number {i}\t{['neg', 'pos'][i % 2]}\n" for i in range(n)]


def _load(path, task="classification", labels=("neg", "pos"), limit=0.01, **source):
    return load_labelled(
        DataSource(path=str(path), **source),
        task,
        list(labels) if labels else None,
        max_bad_fraction=limit,
    )


# ----------------------------------------------------------------------------- line spans


def test_a_stray_quote_swallowing_600_lines_fails_the_run_at_its_line(tmp_path):
    """The issue's case: a leading '"' on row 100 of a 1,000-row CSV made 600 lines one
    15 KB row and the file loaded as 400 rows with none bad. Every swallowed line is bad."""
    rows = [f"sentence number {i},{['neg', 'pos'][i % 2]}\n" for i in range(ROWS)]
    rows[99] = '"' + rows[99]
    rows[699] = 'a "quoted" word,pos\n'  # the next quote closes the runaway field
    path = tmp_path / "runaway.csv"
    path.write_text("text,label\n" + "".join(rows))
    with pytest.raises(DataError) as e:
        _load(path)
    msg = str(e.value)
    assert "too many bad rows" in msg and "quoted field over several lines: 601" in msg
    assert f"{path}:101: a quoted field runs over lines 101-701" in msg
    data = _load(path, limit=1.0)
    assert data.report.bad == 601 and len(data.dataset) == ROWS - 601
    assert max(len(t) for t in data.dataset["text"]) < 40  # no merged monster row


@pytest.mark.parametrize("stray_at", [100, 7900])
def test_a_stray_quote_past_the_csv_field_limit_loses_no_line(tmp_path, stray_at):
    """Issue 28: a stray '"' at row 100 of 8,000 ran past csv's 131,072-character field limit;
    the reader counted 1 bad row and lost ~5,000 lines (`3905 rows read, 1 dropped`). Every
    line is now read or counted bad, whether the field hits the limit or the end of the file."""
    n = 8000
    rows = [f"sentence number {i},{['neg', 'pos'][i % 2]}\n" for i in range(n)]
    rows[stray_at - 1] = '"' + rows[stray_at - 1]
    path = tmp_path / "runaway.csv"
    path.write_text("text,label\n" + "".join(rows))
    line = stray_at + 1  # the header is line 1
    with pytest.raises(
        DataError, match=re.escape(f"{path}:{line}: a quoted field runs over lines {line}-")
    ):
        _load(path)
    data = _load(path, limit=1.0)
    rep = data.report
    assert rep.total == n and rep.bad + len(data.dataset) == n  # read or bad: nothing lost
    assert rep.reasons == {"quoted field over several lines": rep.bad} and rep.bad >= 10
    assert data.dataset["text"][: stray_at - 1] == [
        f"sentence number {i}" for i in range(stray_at - 1)
    ]
    assert max(len(t) for t in data.dataset["text"]) < 40


def test_a_stray_quote_in_the_header_stops_the_run_at_line_1(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text('"text,label\n' + "".join(f"row {i},pos\n" for i in range(20000)))
    with pytest.raises(DataError, match=re.escape(f"{path}:1: the header runs over lines 1-")):
        _load(path)


def test_quoted_commas_on_one_line_are_fine(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('text,label\n"one, two",pos\n"three ""quoted""",neg\n')
    data = _load(path, limit=0.0)
    assert data.dataset["text"] == ["one, two", 'three "quoted"']


# ----------------------------------------------------------------------------- encodings


def test_a_byte_order_mark_is_dropped_and_said(tmp_path, capsys):
    path = tmp_path / "excel.tsv"
    path.write_bytes(b"\xef\xbb\xbftext\tlabel\n" + "".join(_tsv_rows()).encode())
    data = _load(path, limit=0.0)  # the header's first column is `text`, not '\ufefftext'
    assert len(data.dataset) == ROWS
    assert "byte-order mark" in capsys.readouterr().out
    assert any("byte-order mark" in n for n in data.checked.notes)


def test_latin1_bytes_are_bad_rows_at_their_line(tmp_path):
    rows = _tsv_rows()
    rows[500] = "caf\xe9 au lait\tpos\n"
    path = tmp_path / "one-latin1-line.tsv"
    path.write_bytes(("text\tlabel\n" + "".join(rows)).encode("latin-1"))
    data = _load(path)  # 1 of 1,000: under the 1% limit, counted and shown
    assert data.report.reasons == {"not UTF-8": 1}
    assert data.report.examples[0].startswith(f"{path}:502: not UTF-8: byte 0xe9")

    whole = tmp_path / "latin1.tsv"
    whole.write_bytes(
        ("text\tlabel\n" + "".join(f"r\xe9sum\xe9 {i}\tpos\n" for i in range(50))).encode("latin-1")
    )
    with pytest.raises(DataError, match=r"50 of 50 rows bad .*not UTF-8: 50.*iconv"):
        _load(whole)


def test_latin1_inside_a_conll_sentence_and_a_corpus(tmp_path):
    conll = tmp_path / "ner.conll"
    conll.write_bytes("Ann B-PER\nwent O\n\nJos\xe9 B-PER\nstayed O\n\n".encode("latin-1"))
    data = _load(conll, "token_classification", ["PER"], limit=1.0)
    assert (
        data.report.reasons == {"not UTF-8": 1}
        and f"{conll}:4: line 4: not UTF-8" in (data.report.examples[0])
    )
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"A first line of text.\n\xff\xfe broken bytes here\nAnother line.\n")
    with pytest.raises(DataError, match=r"1 of 3 rows bad .*corpus.txt:2: not UTF-8"):
        load_corpus(CorpusConfig(source=DataSource(path=str(corpus)), document_split="line"))


# ----------------------------------------------------------------------------- whole files


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.tsv", "", "empty.tsv: the file is empty"),
        ("header-only.tsv", "text\tlabel\n", "header-only.tsv: a header and no rows"),
        ("header-only.csv", "text,label\n\n\n", "header-only.csv: a header and no rows"),
        ("blank-header.tsv", "\n\nx\t1\n", "blank-header.tsv:1: no readable header"),
        ("twice.tsv", "text\ttext\nx\ty\n", "twice.tsv:1: repeated column names"),
        ("array.json", '[{"text": "a", "label": "pos"}]\n', "array.json: a JSON array"),
        ("prose.txt", "just some prose\nmore prose\n", "cannot tell the format"),
    ],
)
def test_unreadable_files_are_one_line_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as e:
        _load(tmp_path / name)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert type(e.value) is DataError  # not datasets' DatasetGenerationError


# ----------------------------------------------------------------------------- rows


def test_wrong_column_counts_empty_text_and_unknown_labels(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text(
        "text\tlabel\ngood\tpos\nmissing a column\n\tneg\ntoo\tmany\tcols\nodd\tmaybe\nfine\tneg\n"
    )
    data = _load(path, limit=1.0)
    assert data.report.total == 6 and len(data.dataset) == 2
    assert data.report.reasons == {
        "wrong number of columns": 2,
        "empty text": 1,
        "unknown label": 1,
    }
    assert f"{path}:3: expected 2 columns (text, label), found 1" in data.report.examples
    assert f"{path}:6: unknown label 'maybe' (allowed: neg, pos)" in data.report.examples


def test_numeric_labels_are_never_guessed_as_indices(tmp_path):
    """Labels '1'..'5' (star ratings): a row labelled '0' is unknown, not read as index 0."""
    path = tmp_path / "stars.tsv"
    path.write_text(
        "text\tlabel\n" + "".join(f"review {i}\t{1 + i % 5}\n" for i in range(50)) + "odd\t0\n"
    )
    data = _load(path, labels=[str(i) for i in range(1, 6)], limit=1.0)
    assert data.report.reasons == {"unknown label": 1}
    assert data.report.examples == [f"{path}:52: unknown label '0' (allowed: 1, 2, 3, 4, 5)"]
    assert sorted(set(data.dataset["label"])) == [0, 1, 2, 3, 4]

    # the data holds indices and the config says so: '0' is labels[0]
    indexed = tmp_path / "indexed.tsv"
    indexed.write_text("text\tlabel\ngood film\t1\nbad film\t0\nwhat\t2\n")
    data = load_labelled(DataSource(path=str(indexed)), "classification", ["neg", "pos"], 1.0, True)
    assert data.dataset["label"] == [1, 0] and data.report.reasons == {"unknown label": 1}


def test_tokens_and_tags_of_different_lengths_are_bad_rows(tmp_path):
    path = tmp_path / "ner.jsonl"
    good = {"tokens": ["Ann", "went", "home"], "tags": ["B-PER", "O", "O"]}
    path.write_text(
        "".join(json.dumps(good) + "\n" for _ in range(20))
        + json.dumps({"tokens": ["Bob", "ran"], "tags": ["B-PER"]})
        + "\n"
        + json.dumps({"tokens": "Bob ran", "tags": ["B-PER", "O"]})
        + "\n"
    )
    data = _load(path, "token_classification", ["PER"], limit=1.0)
    assert len(data.dataset) == 20
    assert data.report.reasons == {
        "tokens and tags differ in length": 1,
        "tokens or tags not word lists": 1,
    }
    assert f"{path}:21: tokens and tags differ in length: 2 tokens, 1 tags" in (
        data.report.examples
    )
    assert f"{path}:22: tokens and tags must be lists of strings" in data.report.examples


# ----------------------------------------------------------------------------- JSON values


def _jsonl(path, bad: list[str], n: int = 100) -> None:
    good = [json.dumps({"text": f"review {i}", "label": ["neg", "pos"][i % 2]}) for i in range(n)]
    path.write_text("\n".join(good + bad) + "\n")


def test_json_python_cannot_read_is_a_bad_row_at_its_line(tmp_path):
    """A 5,000-digit number (Python's int() refuses over 4,300), nesting past the recursion
    limit and a lone surrogate escape raised bare ValueError / RecursionError /
    UnicodeEncodeError from inside `datasets`, naming no file or line."""
    path = tmp_path / "hostile.jsonl"
    huge = '{"text": "a", "label": "pos", "id": ' + "9" * 5000 + "}"
    deep = '{"text": "a", "label": "pos", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    surrogate = '{"text": "a \\ud800 b", "label": "pos"}'
    _jsonl(path, [huge, deep, surrogate])
    with pytest.raises(DataError, match=r"3 of 103 rows bad .*invalid JSON: 3"):
        _load(path)
    ex = _load(path, limit=1.0).report.examples
    assert ex[0].startswith(f"{path}:101: invalid JSON (") and "4300 digits" in ex[0]
    assert ex[1].startswith(f"{path}:102: invalid JSON (nested") and ex[2].startswith(
        f"{path}:103: invalid JSON (a lone surrogate \\ud800"
    )
    # the same line first in the file, where the format is decided
    first = tmp_path / "first.jsonl"
    first.write_text(huge + "\n" + deep + "\n" + json.dumps({"text": "b", "label": "neg"}) + "\n")
    rep = _load(first, limit=1.0).report
    assert rep.total == 3 and rep.reasons == {"invalid JSON": 2}


def test_json_labels_are_strings_or_integers(tmp_path):
    """A dict label became its Python repr and NaN the class 'nan'; now each is a bad row
    naming the value as the file wrote it."""
    path = tmp_path / "labels.jsonl"
    odd = ['{"a": 1}', "[1]", "1.5", "NaN", "Infinity", "true"]
    _jsonl(path, [f'{{"text": "odd {i}", "label": {v}}}' for i, v in enumerate(odd)])
    data = _load(path, labels=None, limit=1.0)  # labels taken from the data
    assert data.labels == ["neg", "pos"] and len(data.dataset) == 100
    assert data.report.reasons == {"bad label": 6}
    assert data.report.examples[0] == (
        f'{path}:101: bad label {{"a": 1}} (a label is a string or an integer)'
    )
    assert [e.split(": bad label ")[1].split(" (")[0] for e in data.report.examples] == odd


def test_integral_float_labels_read_as_integers(tmp_path):
    """`1.0` (pandas writes integer labels with a missing value as floats) is the label '1',
    as the JSON integer 1 is, and index 1 under labels_are_indices, never a class '1.0'."""
    path = tmp_path / "floats.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"r {i}", "label": float(i % 2)}) + "\n" for i in range(20))
        + json.dumps({"text": "int", "label": 1})
        + "\n"
    )
    data = _load(path, labels=("0", "1"), limit=0.0)
    assert data.dataset["label"] == [i % 2 for i in range(20)] + [1]
    assert _load(path, labels=None, limit=0.0).labels == ["0", "1"]
    data = load_labelled(DataSource(path=str(path)), "classification", ["neg", "pos"], 0.0, True)
    assert data.dataset["label"] == [i % 2 for i in range(20)] + [1]


def test_digit_like_labels_never_crash(tmp_path):
    """'²' passed str.isdigit() and crashed int(); '--1' crashed the numeric sort."""
    path = tmp_path / "digits.tsv"
    path.write_text(
        "text\tlabel\n" + "".join(f"r {i}\t{i % 3}\n" for i in range(30)) + "x\t\u00b2\ny\t--1\n"
    )
    data = _load(path, labels=None, limit=0.0)
    assert data.labels == ["0", "1", "2", "--1", "\u00b2"]  # numbers in order, then names
    data = load_labelled(DataSource(path=str(path)), "classification", ["a", "b", "c"], 1.0, True)
    assert data.report.examples == [
        f"{path}:32: unknown label '\u00b2' (allowed: a, b, c)",
        f"{path}:33: unknown label '--1' (allowed: a, b, c)",
    ]


# ----------------------------------------------------------------------------- formats


def test_format_auto_reads_content_and_extension_and_says_which(tmp_path, capsys):
    ner = {"tokens": ["Ann", "went"], "tags": ["B-PER", "O"]}
    # NER JSON lines: the extension and the content agree (it was read as CoNLL before)
    (tmp_path / "ner.jsonl").write_text(json.dumps(ner) + "\n")
    data = _load(tmp_path / "ner.jsonl", "token_classification", ["PER"], limit=0.0)
    assert data.checked.source.format == "jsonl" and data.dataset["tokens"] == [["Ann", "went"]]
    assert "format jsonl (from the .jsonl extension; the content agrees)" in capsys.readouterr().out

    # CoNLL named .txt: the content decides
    (tmp_path / "ner.txt").write_text("Ann B-PER\nwent O\n\n")
    data = _load(tmp_path / "ner.txt", "token_classification", ["PER"], limit=0.0)
    assert data.checked.source.format == "conll"
    assert data.checked.how == "its content: the first lines read as conll"

    # JSON lines named .csv: the content wins, and the message says so
    (tmp_path / "rows.csv").write_text(json.dumps({"text": "a film", "label": "pos"}) + "\n")
    data = _load(tmp_path / "rows.csv", limit=0.0)
    assert data.checked.source.format == "jsonl"
    assert "not csv as the .csv extension says" in data.checked.how

    # a folder mixing formats is refused, naming the extensions
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.csv").write_text("text,label\na,pos\n")
    (mixed / "b.jsonl").write_text(json.dumps({"text": "b", "label": "neg"}) + "\n")
    with pytest.raises(DataError, match=r"files of different formats \(\.csv, \.jsonl\)"):
        _load(mixed)


# ----------------------------------------------------------------------------- the report


def test_data_report_counts_rows_labels_lengths_and_truncation(tmp_path, wordpiece_8k):
    from tokenizers import Tokenizer

    from lmplatform.tasks import task_type
    from lmplatform.tasks.data import data_report, describe_report

    rows = _tsv_rows(200)
    rows[10] = "\tpos\n"
    rows[20] = " ".join(["word"] * 300) + "\tneg\n"  # longer than max_seq_len
    path = tmp_path / "r.tsv"
    path.write_text("text\tlabel\n" + "".join(rows))
    data = _load(path, limit=0.05)
    tok = Tokenizer.from_file(str(wordpiece_8k))
    rep = data_report(data, task_type("classification"), tok, 64, ["negative", "positive"])
    assert rep["rows_read"] == 200 and rep["rows_dropped"] == 1 and rep["rows_used"] == 199
    assert rep["dropped_by_reason"] == {"empty text": 1}
    assert rep["first_dropped"] == [f"{path}:12: empty text"]
    assert rep["labels"] == {"negative": 99, "positive": 100}
    assert rep["format"] == "tsv" and "extension" in rep["format_from"]
    t = rep["input_tokens"]
    assert 4 <= t["p50"] <= 8 and t["max"] >= 300  # [CLS] sentence number N [SEP]
    assert rep["truncated_fraction"] == pytest.approx(1 / 199, abs=1e-4)
    line = describe_report("train", rep)
    assert "200 rows read, 1 dropped (empty text 1)" in line and "0.50% over max_seq_len=64" in line


def test_a_corpus_counts_records_not_documents(tmp_path):
    """Corpus lines merge into documents; the bad fraction is of lines read."""
    from lmplatform.data.corpus import read_corpus

    lines = [f"Line {i} of a document about nothing much." for i in range(300)]
    text = "\n\n".join("\n".join(lines[i : i + 3]) for i in range(0, 300, 3)).encode()
    path = tmp_path / "corpus.txt"
    path.write_bytes(text + b"\n\nA final line with a bad byte \xff here.\n")
    corpus = read_corpus(CorpusConfig(source=DataSource(path=str(path))))
    rep = corpus.data_report()
    assert rep["documents"] == 100 and rep["format"] == "text"
    assert rep["rows_read"] == 300 + 99 + 2 and rep["rows_dropped"] == 1  # lines, blank ones too
    assert rep["first_dropped"] == [
        f"{path}:401: not UTF-8: byte 0xff at byte 30 of the line (re-save the file as UTF-8, e.g. iconv -f latin1 -t utf-8)"
    ]
    assert rep["document_chars"]["p50"] > 100
