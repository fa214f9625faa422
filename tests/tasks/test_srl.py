"""Semantic role labelling: reading Universal Propositions, the argument metric, a model that
learns roles from the predicate it is given, and how a new task type joins the table."""

from __future__ import annotations

import random

import pytest
import torch

from lmplatform.data.sources import DataError, DataSource
from lmplatform.metrics import srl_report
from lmplatform.tasks.data import load_labelled


def test_argument_f1_matches_a_hand_computed_example():
    gold = [["O", "ARG0", "V", "ARG1", "O"], ["ARG1", "O", "O", "V", "ARGM-TMP"]]
    pred = [["O", "ARG0", "V", "ARG2", "O"], ["ARG1", "O", "ARG0", "V", "ARGM-TMP"]]
    # gold triples (predicate, word, role): (0,1,ARG0) (0,3,ARG1) (1,0,ARG1) (1,4,ARGM-TMP)
    # predicted: (0,1,ARG0) (0,3,ARG2) (1,0,ARG1) (1,2,ARG0) (1,4,ARGM-TMP); 3 of them right
    rep = srl_report(pred, gold)
    assert rep["argument_precision"] == pytest.approx(3 / 5)
    assert rep["argument_recall"] == pytest.approx(3 / 4)
    assert rep["argument_f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    per = rep["per_label"]
    assert (per["ARG0"]["precision"], per["ARG0"]["recall"], per["ARG0"]["support"]) == (
        0.5,
        1.0,
        1,
    )
    assert (per["ARG1"]["precision"], per["ARG1"]["recall"], per["ARG1"]["support"]) == (
        1.0,
        0.5,
        2,
    )
    assert per["ARG2"]["f1"] == 0.0 and per["ARGM-TMP"]["f1"] == 1.0
    assert "V" not in per and "O" not in per  # the predicate itself is never an argument
    assert srl_report(gold, gold)["argument_f1"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        srl_report([["O"]], [["O", "O"]])


def test_universal_propositions_give_one_row_per_predicate(shared_data):
    dev = load_labelled(DataSource(path=str(shared_data / "srl" / "dev.conllu")), "srl")
    assert len(dev.dataset) == 697 and dev.report.bad == 0  # the README's predicate count
    assert {"ARG0", "ARG1", "ARG2", "ARGM-TMP"} <= set(dev.labels)
    assert not {"O", "V", "_"} & set(dev.labels)
    first = dev.dataset.select(range(3)).to_list()  # "The lesson was donated by the teacher Adz ."
    assert [r["predicate"] for r in first] == [1, 2, 3]
    donated = first[2]
    assert donated["tokens"][3] == "donated" and donated["tags"][3] == "V"
    assert donated["tags"][1] == "ARG1" and donated["tags"][6] == "ARG0"
    assert donated["tags"].count("O") == 6
    # roles become ids for the loss; the predicate's own V is not learned
    assert donated["tag_ids"][3] == -100 and donated["tag_ids"][0] == 0


def test_malformed_conllu_is_reported_by_line(tmp_path):
    good = "1\tdogs\tdog\tNOUN\tNNS\t_\t2\tnsubj\t_\t_\t_\tARG0\n2\tbark\tbark\tVERB\tVBP\t_\t0\troot\t_\t_\tbark.01\tV\n"
    no_v = "1\tdogs\tdog\tNOUN\tNNS\t_\t2\tnsubj\t_\t_\t_\tARG0\n2\tbark\tbark\tVERB\tVBP\t_\t0\troot\t_\t_\tbark.01\t_\n"
    short = "1\tdogs\tdog\n"
    path = tmp_path / "bad.conllu"
    path.write_text("# text = dogs bark\n" + good + "\n" + no_v + "\n" + short + "\n" + good + "\n")
    data = load_labelled(DataSource(path=str(path)), "srl", max_bad_fraction=1.0)
    assert len(data.dataset) == 2 and data.report.bad == 2
    summary = data.report.summary()
    assert "has no 'V' on its predicate (word 2)" in summary and "bad.conllu:5" in summary
    assert "expected 10 or more tab-separated columns" in summary
    with pytest.raises(DataError, match="too many bad rows"):
        load_labelled(DataSource(path=str(path)), "srl", max_bad_fraction=0.1)


NOUNS = "dog cat man woman child bird teacher doctor farmer king".split()
VERBS = "chased saw helped met called followed found pushed".split()


def _synthetic_conllu(path, n: int, seed: int) -> None:
    """'the N1 V1 the N2 and the N3 V2 the N4': for V1, N1 is ARG0 and N2 ARG1; for V2, N3 and
    N4. The same words get other roles for the other predicate: only the predicate tells."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        n1, n2, n3, n4 = (rng.choice(NOUNS) for _ in range(4))
        v1, v2 = rng.choice(VERBS), rng.choice(VERBS)
        words = ["the", n1, v1, "the", n2, "and", "the", n3, v2, "the", n4]
        roles1 = {1: "ARG0", 2: "V", 4: "ARG1"}
        roles2 = {7: "ARG0", 8: "V", 10: "ARG1"}
        for i, w in enumerate(words):
            sense = f"{w}.01" if i in (2, 8) else "_"
            cols = [str(i + 1), w, w, "X", "X", "_", "0", "dep", "_", "_", sense]
            cols += [roles1.get(i, "_"), roles2.get(i, "_")]
            out.append("\t".join(cols))
        out.append("")
    path.write_text("\n".join(out) + "\n")


@pytest.mark.parametrize("family", ["bert", "lstm"])
def test_a_model_learns_roles_from_the_predicate_it_is_given(family, tmp_path):
    from lmplatform.models import BertConfig, LSTMConfig
    from lmplatform.models.tasks import TaskModel, build_encoder
    from lmplatform.tasks import task_type
    from lmplatform.tasks.encoding import TaskEncoder
    from lmplatform.tokenization import TokenizerConfig, load_tokenizer, train_tokenizer
    from lmplatform.train.config import TrainConfig
    from lmplatform.train.loop import fit
    from lmplatform.tune.trial import evaluate

    torch.manual_seed(0)
    _synthetic_conllu(tmp_path / "train.conllu", 300, seed=0)
    _synthetic_conllu(tmp_path / "dev.conllu", 40, seed=1)
    train = load_labelled(DataSource(path=str(tmp_path / "train.conllu")), "srl")
    dev = load_labelled(DataSource(path=str(tmp_path / "dev.conllu")), "srl", train.labels)
    assert train.labels == ["ARG0", "ARG1"] and len(train.dataset) == 600
    kind = "wordpiece" if family == "bert" else "bpe"
    text = [" ".join(NOUNS + VERBS + ["the", "and"])] * 20
    tok_path = train_tokenizer(TokenizerConfig(kind=kind, vocab_size=300), [text], tmp_path / "tok")
    tok = load_tokenizer(tok_path)
    srl = task_type("srl")
    outputs = srl.outputs(train.labels, None)
    cfg = (BertConfig if family == "bert" else LSTMConfig)(
        size="debug", vocab_size=tok.get_vocab_size()
    )
    model = TaskModel(build_encoder(cfg), "srl", len(outputs), layout=srl.layout)
    enc = TaskEncoder(tok, "srl", 32)
    rows = train.dataset.to_list()

    def batches():
        rng = random.Random(0)
        while True:
            yield enc.collate(rng.sample(rows, 16))

    fit(
        model,
        batches(),
        TrainConfig(lr=3e-3, warmup_ratio=0.05, log_every=1000),
        total_steps=400,
        log=None,
    )

    class _Data:  # what evaluate reads of a fine-tuning run
        label_names, classes = outputs, train.labels
        cfg = type("C", (), {"task": type("T", (), {"type": "srl"})})

    metrics = evaluate(model, _Data, dev.dataset.to_list(), enc, detail=True)
    assert metrics["argument_f1"] > 0.9, metrics
    assert set(metrics["per_class"]) == {"ARG0", "ARG1"}
