"""A new task type is one class and one entry in the task-type table: this test adds one (a
question classifier whose HTTP input is `{"question": "..."}`) and takes it through config
validation, data loading, training, evaluation, saving and the HTTP API, touching no other
module."""

from __future__ import annotations

import random

import pytest
import requests
import torch
from pydantic import BaseModel, ConfigDict, StrictStr

from lmplatform.tasks import TASK_TYPES, InputError
from lmplatform.tasks.classification import Classification
from serving_fixtures import local_server


class QuestionInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: StrictStr


class Question(Classification):
    name = "question"
    input_schema = QuestionInput
    smoke_input = {"question": "what is this?"}

    def parse(self, x, where, max_len, options):
        if isinstance(x, BaseModel):
            x = x.model_dump()
        if not isinstance(x, dict) or set(x) != {"question"}:
            raise InputError(f'{where}: expected {{"question": "..."}} for a question task')
        return super().parse(x["question"], f"{where}.question", max_len, options)


@pytest.fixture
def question_type(monkeypatch):
    monkeypatch.setitem(TASK_TYPES, "question", Question())


def test_a_new_task_type_is_one_class_and_one_table_entry(question_type, tmp_path):
    from lmplatform.data.sources import DataSource
    from lmplatform.models import BertConfig
    from lmplatform.models.io import save_pretrained
    from lmplatform.models.tasks import TaskModel, build_encoder
    from lmplatform.serving.predictors import ModelInfo, TaskPredictor
    from lmplatform.tasks.config import TaskConfig
    from lmplatform.tasks.data import load_labelled
    from lmplatform.tasks.encoding import TaskEncoder
    from lmplatform.tokenization import TokenizerConfig, load_tokenizer, train_tokenizer
    from lmplatform.train.config import TrainConfig
    from lmplatform.train.loop import fit
    from lmplatform.tune.trial import evaluate

    rng = random.Random(0)
    things = "the cat the sky the river the king the city the rain the song".split(" the ")
    lines = ["question\tlabel"]
    for _ in range(200):
        kind = rng.choice(["why", "where"])
        lines.append(f"{kind} is {rng.choice(things)} here ?\t{kind}")
    (tmp_path / "q.tsv").write_text("\n".join(lines) + "\n")
    source = {"path": str(tmp_path / "q.tsv"), "text_column": "question"}
    task = TaskConfig(name="questions", type="question", train=source, dev=source)
    assert task.metric == "accuracy"  # the type's default metric
    with pytest.raises(ValueError, match="unknown task type 'nope'.*question"):
        TaskConfig(name="x", type="nope", train=source, dev=source)

    data = load_labelled(DataSource(**source), "question")
    assert data.labels == ["where", "why"] and len(data.dataset) == 200
    tok_path = train_tokenizer(
        TokenizerConfig(kind="wordpiece", vocab_size=300), [lines] * 5, tmp_path / "tok"
    )
    tok = load_tokenizer(tok_path)
    torch.manual_seed(0)
    qt = TASK_TYPES["question"]
    model = TaskModel(
        build_encoder(BertConfig(size="debug", vocab_size=tok.get_vocab_size())),
        "question",
        2,
        layout=qt.layout,
    )
    enc = TaskEncoder(tok, "question", 32)
    rows = data.dataset.to_list()

    def batches():
        while True:
            yield enc.collate(rng.sample(rows, 16))

    fit(model, batches(), TrainConfig(lr=1e-3, log_every=1000), total_steps=60, log=None)

    class _Data:
        label_names, classes = data.labels, data.labels
        cfg = type("C", (), {"task": type("T", (), {"type": "question"})})

    assert evaluate(model, _Data, rows, enc)["accuracy"] > 0.95

    folder = save_pretrained(
        model,
        tmp_path / "model",
        tokenizer=tok_path,
        extra={"labels": data.labels, "max_seq_len": 32},
    )
    predictor = TaskPredictor(folder, ModelInfo(name="questions", version="v0001"))
    predictor.smoke()
    with local_server({"questions": predictor}) as base:
        url = f"{base}/v1/predict/questions"
        r = requests.post(url, json={"inputs": [{"question": "why is the sky here ?"}]}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] == "why"
        r = requests.post(url, json={"inputs": ["a plain string"]}, timeout=10)
        assert r.status_code == 422 and '{"question": "..."}' in r.json()["error"]["message"]
