"""Metrics: entity F1 identical to seqeval; classification metrics by hand; counts of shards
that add up to the whole's scores."""

import random

import pytest
import sacrebleu
from seqeval.metrics import f1_score, precision_score, recall_score

from lmplatform.data.sources import DataSource
from lmplatform.metrics import add_counts, classification_report, entity_report, get_entities
from lmplatform.tasks import task_type
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


def _shards(scorer_of, predicted, rows, world=2, bs=7):
    """Scores of every row by one scorer, and the sum of `world` scorers' counts, each scorer
    taking every world-th batch of `bs` rows (as sharded evaluation cuts them)."""
    whole = scorer_of()
    whole.add_labels(predicted, rows)
    parts = []
    for rank in range(world):
        part = scorer_of()
        for lo in range(rank * bs, len(rows), world * bs):
            part.add_labels(predicted[lo : lo + bs], rows[lo : lo + bs])
        parts.append(part.counts())
    return whole.result(), whole.result_of(add_counts(parts))


def test_sharded_counts_score_exactly_as_one_rank(shared_data):
    """Every task type's scorer: the counts of two shards, added, give the metrics of one
    scorer over all rows, exactly (accuracy and macro F1, entity F1 on CoNLL dev, SRL argument
    F1, corpus BLEU and chrF on Multi30k)."""
    rng = random.Random(0)
    labels = ["neg", "neu", "pos"]
    rows = [{"label": rng.randrange(3)} for _ in range(101)]
    pred = [r["label"] if rng.random() < 0.7 else rng.randrange(3) for r in rows]
    one, summed = _shards(lambda: task_type("classification").scorer(labels, labels), pred, rows)
    assert one == summed and 0.6 < one[0]["accuracy"] < 0.9

    data = load_labelled(
        DataSource(path=str(shared_data / "conll2003" / "dev.txt")), "token_classification", TYPES
    )
    names = bio_tags(TYPES)
    rows = [{"tags": t, "tokens": w} for t, w in zip(data.dataset["tags"], data.dataset["tokens"])]
    pred = _perturb([[names[t] for t in r["tags"]] for r in rows], rng)
    scorer = task_type("token_classification").scorer
    one, summed = _shards(lambda: scorer(names, TYPES), pred, rows)
    assert one == summed and 0.5 < one[0]["entity_f1"] < 1.0

    roles = ["ARG0", "ARG1", "ARGM-TMP"]
    rows = []
    for _ in range(60):
        n = rng.randrange(3, 12)
        tags = [rng.choice(["O", "O", *roles]) for _ in range(n)]
        p = rng.randrange(n)
        tags[p] = "V"
        rows.append({"tokens": ["w"] * n, "tags": tags, "predicate": p})
    pred = [[t if rng.random() < 0.8 else rng.choice(roles) for t in r["tags"]] for r in rows]
    one, summed = _shards(lambda: task_type("srl").scorer(roles, roles), pred, rows)
    assert one == summed and 0.5 < one[0]["argument_f1"] < 1.0

    refs = (shared_data / "multi30k" / "val.en").read_text().splitlines()[:300]
    hyps = [" ".join(w for w in r.split() if rng.random() < 0.85) for r in refs]
    rows = [{"target": r} for r in refs]
    seq2seq = task_type("seq2seq")
    one, summed = _shards(lambda: seq2seq.scorer([], [], task=_Seq2SeqTask), hyps, rows)
    assert one == summed and 20 < one[0]["bleu"] < 90
    # and the statistics are sacrebleu's own: its corpus scores, as papers report them
    assert one[0]["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert one[0]["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score


class _Seq2SeqTask:
    decoding = None
