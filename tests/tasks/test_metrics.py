"""Metrics: entity F1 identical to seqeval; classification metrics by hand."""

import random

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from lmplatform.data.sources import DataSource
from lmplatform.metrics import classification_report, entity_report, get_entities
from lmplatform.tasks.data import load_labelled
from lmplatform.tasks.token_classification import bio_tags

TYPES = ["PER", "LOC", "ORG", "MISC"]


def _perturb(tags, rng):
    out = []
    all_tags = bio_tags(TYPES)
    for sent in tags:
        s = list(sent)
        for i in range(len(s)):
            r = rng.random()
            if r < 0.04:
                s[i] = rng.choice(all_tags)  # any tag, including an I- after O
            elif r < 0.06 and s[i] != "O":
                s[i] = "I-" + s[i][2:] if s[i].startswith("B-") else "B-" + s[i][2:]
        out.append(s)
    return out


def test_entity_f1_equals_seqeval_on_conll_dev(shared_data):
    data = load_labelled(
        DataSource(path=str(shared_data / "conll2003" / "dev.txt")), "token_classification", TYPES
    )
    names = bio_tags(TYPES)
    gold = [[names[t] for t in tags] for tags in data.dataset["tags"]]
    assert len(gold) == 3250
    for seed in range(3):
        pred = _perturb(gold, random.Random(seed))
        ours = entity_report(pred, gold)
        assert ours["entity_f1"] == pytest.approx(f1_score(gold, pred), abs=1e-12)
        assert ours["entity_precision"] == pytest.approx(precision_score(gold, pred), abs=1e-12)
        assert ours["entity_recall"] == pytest.approx(recall_score(gold, pred), abs=1e-12)
        assert 0.5 < ours["entity_f1"] < 1.0
    assert entity_report(gold, gold)["entity_f1"] == 1.0


def test_entities_are_strict_about_type_and_span():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["O", "I-ORG", "I-ORG"]) == [("ORG", 1, 2)]  # I- after O opens an entity
    assert get_entities(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    gold = [["B-PER", "I-PER", "O"]]
    assert entity_report([["B-PER", "O", "O"]], gold)["entity_f1"] == 0.0  # wrong span
    assert entity_report([["B-LOC", "I-LOC", "O"]], gold)["entity_f1"] == 0.0  # wrong type


def test_classification_report():
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    rep = classification_report(pred, gold, ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert rep["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert rep["per_class"]["c"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert rep["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
