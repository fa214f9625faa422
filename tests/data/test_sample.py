"""The embedded sample: deterministic, in our own words, and clean for every loader."""

import hashlib
import math

from lmplatform.data.corpus import CorpusConfig, load_corpus
from lmplatform.data.sample import ensure_sample
from lmplatform.data.sources import DataSource
from lmplatform.tasks.data import load_labelled


def _digest(root):
    return hashlib.sha256(
        b"".join(
            p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".complete"
        )
    ).hexdigest()


def test_sample_is_deterministic(tmp_path, sample_dir):
    other = ensure_sample(tmp_path / "again")
    assert _digest(other) == _digest(sample_dir)


def test_sample_files_load_without_bad_rows(sample_dir):
    docs = load_corpus(CorpusConfig(source=DataSource(path="sample://corpus/train.txt")))
    assert len(docs) == 2000
    words = sum(len(t.split()) for t in docs["text"])
    assert words > 100_000
    for split, n in (("train", 3000), ("dev", 500)):
        s = load_labelled(
            DataSource(path=f"sample://sentiment/{split}.tsv", text_column="sentence"),
            "classification",
            ["negative", "positive"],
            0.0,
            labels_are_indices=True,
        )
        assert len(s.dataset) == n and s.report.bad == 0
        t = load_labelled(
            DataSource(
                path=f"sample://topics/{split}.tsv", header=False, columns=["text", "label"]
            ),
            "classification",
            None,
            0.0,
        )
        assert len(t.dataset) == n and t.labels == ["Business", "Sci/Tech", "Sports", "World"]
    ner = load_labelled(
        DataSource(path="sample://ner/train.txt"),
        "token_classification",
        ["PER", "LOC", "ORG", "MISC"],
        0.0,
    )
    assert len(ner.dataset) == 3000
    assert all(
        len(toks) == len(tags) for toks, tags in zip(ner.dataset["tokens"], ner.dataset["tags"])
    )


def test_sample_labels_are_balanced_and_learnable(sample_dir):
    """Labels follow the text (a bag-of-words rule beats chance by far), so a demo model can learn."""
    s = load_labelled(
        DataSource(path="sample://sentiment/train.tsv", text_column="sentence"),
        "classification",
        ["negative", "positive"],
        0.0,
        labels_are_indices=True,
    )
    labels = s.dataset["label"]
    assert 0.4 < sum(labels) / len(labels) < 0.6
    from collections import Counter

    counts = [Counter(), Counter()]
    for text, y in zip(s.dataset["text"], labels):
        counts[y].update(text.split())
    dev = load_labelled(
        DataSource(path="sample://sentiment/dev.tsv", text_column="sentence"),
        "classification",
        ["negative", "positive"],
        0.0,
        labels_are_indices=True,
    )
    right = 0
    for text, y in zip(dev.dataset["text"], dev.dataset["label"]):
        # naive Bayes log-odds
        score = sum(math.log((counts[1][w] + 1) / (counts[0][w] + 1)) for w in text.split())
        right += int((score > 0) == (y == 1))
    assert right / len(dev.dataset) > 0.7
