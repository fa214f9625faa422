"""Loading real and malformed files: CoNLL, TSV, CSV, JSON lines, parquet, remote URIs."""

import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmplatform.data import sources
from lmplatform.data.corpus import CorpusConfig, load_corpus
from lmplatform.data.sources import DataError, DataSource, fingerprint
from lmplatform.tasks.data import load_labelled
from lmplatform.tasks.token_classification import bio_tags

TYPES = ["PER", "LOC", "ORG", "MISC"]


def test_conll_train_has_exactly_14041_sentences(shared_data):
    data = load_labelled(
        DataSource(path=str(shared_data / "conll2003" / "train.txt")), "token_classification", TYPES
    )
    assert len(data.dataset) == 14041
    assert data.report.bad == 0
    assert data.labels == TYPES
    first = data.dataset[0]
    tags = bio_tags(TYPES)
    assert first["tokens"][:2] == ["EU", "rejects"]
    assert [tags[t] for t in first["tags"][:3]] == ["B-ORG", "O", "B-MISC"]


def _conll_with_broken_line(shared_data, tmp_path):
    lines = (shared_data / "conll2003" / "dev.txt").read_text().splitlines(keepends=True)[:400]
    target = next(i for i in range(200, 400) if lines[i].strip() and lines[i - 1].strip())
    lines.insert(target, "BROKENLINE\n")
    path = tmp_path / "broken.txt"
    path.write_text("".join(lines))
    return path, target + 1  # 1-based line number of the injected line


def test_conll_malformed_line_is_reported_with_its_line_number(shared_data, tmp_path):
    path, line_no = _conll_with_broken_line(shared_data, tmp_path)
    data = load_labelled(
        DataSource(path=str(path)), "token_classification", TYPES, max_bad_fraction=0.5
    )
    assert data.report.bad == 1
    assert f"line {line_no}" in data.report.examples[0]
    assert str(path) in data.report.examples[0]
    with pytest.raises(DataError) as e:
        load_labelled(
            DataSource(path=str(path)), "token_classification", TYPES, max_bad_fraction=0.0
        )
    assert f"line {line_no}" in str(e.value) and "malformed line" in str(e.value)


def test_unknown_conll_tag_is_a_bad_row(tmp_path):
    path = tmp_path / "t.conll"
    path.write_text("Ann B-PER\nwent O\n\nBob B-PERSON\n\n")
    data = load_labelled(
        DataSource(path=str(path)), "token_classification", TYPES, max_bad_fraction=0.6
    )
    assert data.report.reasons["unknown label"] == 1
    assert f"{path}:4" in data.report.examples[0]


def test_sst2_tsv_with_header(shared_data):
    src = DataSource(path=str(shared_data / "sst2" / "dev.tsv"), text_column="sentence")
    data = load_labelled(src, "classification", ["negative", "positive"], labels_are_indices=True)
    assert len(data.dataset) == 6735 and data.report.bad == 0
    assert set(data.dataset["label"]) == {0, 1}


def test_agnews_headerless_tsv_infers_labels(shared_data):
    src = DataSource(
        path=str(shared_data / "agnews" / "dev.tsv"), header=False, columns=["text", "label"]
    )
    data = load_labelled(src, "classification")
    rows = sum(
        1 for ln in (shared_data / "agnews" / "dev.tsv").read_text().splitlines() if ln.strip()
    )
    assert len(data.dataset) == rows > 990
    assert data.labels == sorted(["World", "Sports", "Business", "Sci/Tech"])


def test_bad_rows_are_counted_by_reason_with_file_and_line(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text(
        "sentence\tlabel\ngood one\t1\n\t0\nno label\t\nweird\t7\nfine\t0\ntoo\tmany\tcols\n"
    )
    src = DataSource(path=str(path), text_column="sentence")
    data = load_labelled(
        src, "classification", ["neg", "pos"], max_bad_fraction=1.0, labels_are_indices=True
    )
    assert len(data.dataset) == 2
    assert data.report.total == 6 and data.report.bad == 4
    assert data.report.reasons == {
        "empty text": 1,
        "missing label": 1,
        "unknown label": 1,
        "wrong number of columns": 1,
    }
    assert any(e.startswith(f"{path}:5: unknown label '7'") for e in data.report.examples)
    with pytest.raises(DataError, match="too many bad rows"):
        load_labelled(
            src, "classification", ["neg", "pos"], max_bad_fraction=0.5, labels_are_indices=True
        )


def test_csv_jsonl_parquet_and_pairs(tmp_path):
    rows = [
        {"a": f"premise {i}", "b": f"hypothesis {i}", "y": ["yes", "no"][i % 2]} for i in range(10)
    ]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.csv").write_text(
        "a,b,y\n" + "".join(f'"{r["a"]}, quoted","{r["b"]}",{r["y"]}\n' for r in rows)
    )
    for name in ("p.jsonl", "p.parquet", "p.csv"):
        src = DataSource(
            path=str(tmp_path / name), text_column="a", text_pair_column="b", label_column="y"
        )
        data = load_labelled(src, "pair_classification", ["no", "yes"], max_bad_fraction=0.1)
        assert len(data.dataset) == 10, name
        assert data.dataset[1]["text_pair"] == "hypothesis 1" and data.dataset[1]["label"] == 0
    assert (
        "quoted"
        in load_labelled(
            DataSource(
                path=str(tmp_path / "p.csv"),
                text_column="a",
                text_pair_column="b",
                label_column="y",
            ),
            "pair_classification",
        ).dataset[0]["text"]
    )


def test_remote_uri_goes_through_fsspec(tmp_path):
    """`memory://` stands in for s3:// or gs://: the same fsspec path, no network needed."""
    fs = fsspec.filesystem("memory")
    with fs.open("/bucket/corpus/a.txt", "w") as f:
        f.write("First document line one.\nline two.\n\nSecond document is here.\n")
    with fs.open("/bucket/corpus/b.txt", "w") as f:
        f.write("Third document, in another file.\n")
    cfg = CorpusConfig(source=DataSource(path="memory://bucket/corpus"), min_chars=5)
    docs = load_corpus(cfg)
    assert docs["text"] == [
        "First document line one.\nline two.",
        "Second document is here.",
        "Third document, in another file.",
    ]
    fp = fingerprint(cfg.source)
    with fs.open("/bucket/corpus/b.txt", "w") as f:
        f.write("Changed content of the third document.\n")
    assert fingerprint(cfg.source) != fp
    assert load_corpus(cfg)["text"][-1] == "Changed content of the third document."


def test_every_data_module_is_in_the_reading_code_hash_or_cannot_change_a_row():
    """Cached rows are keyed by a hash of the modules that turn files into rows
    (`sources.READING_CODE`): a new module of the package goes there, or here if no row it
    reads can depend on it."""
    cannot_change_a_row = {"__init__.py", "badrows.py", "sample.py"}
    package = {p.name for p in Path(sources.__file__).parent.glob("*.py")}
    assert set(sources.READING_CODE).isdisjoint(cannot_change_a_row)
    assert package == set(sources.READING_CODE) | cannot_change_a_row


def test_wikitext_documents_split_at_titles(wikitext_corpus):
    _, docs = wikitext_corpus
    assert (
        100 < len(docs) < 400
    )  # WikiText-2 valid+test hold about 60 + 60 articles... plus sections
    assert docs[0]["text"].startswith("= ")


def test_labelled_task_files_are_corpora_for_adaptive_pretraining(shared_data):
    """Continued pretraining reads a task's own training file as unlabelled text: one
    document per row (TSV text column) or per sentence (CoNLL words joined)."""
    conll = load_corpus(
        CorpusConfig(
            source=DataSource(path=str(shared_data / "conll2003" / "train.txt"), format="conll"),
            document_split="line",
            min_chars=1,
        )
    )
    assert len(conll) == 14041
    assert conll[0]["text"] == "EU rejects German call to boycott British lamb ."
    sst2 = load_corpus(
        CorpusConfig(
            source=DataSource(path=str(shared_data / "sst2" / "train.tsv"), text_column="sentence"),
            document_split="line",
        )
    )
    assert 20000 < len(sst2) < 60614  # phrases under min_chars (20) are dropped
    assert not any(t in ("0", "1") for t in sst2["text"][:100])  # text, never the label


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_labelled(DataSource(path=str(tmp_path / "nope.tsv")), "classification")
    (tmp_path / "x.weird").write_text("a\n")
    with pytest.raises(DataError, match="set format"):
        load_labelled(DataSource(path=str(tmp_path / "x.weird")), "classification")
