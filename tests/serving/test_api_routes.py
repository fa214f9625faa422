"""Every route over real HTTP: health, tasks, OpenAPI, each task type, fill-mask, generation and its stream."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests

from serving_fixtures import NER_LABELS, SRL_LABELS

from .common import _post, _stats

# ----------------------------------------------------------------------------- routes


def test_health_tasks_and_openapi(served):
    r = requests.get(served["url"] + "/healthz", timeout=10)
    assert (r.status_code, r.json()) == (200, {"status": "ok", "problems": []})
    tasks = requests.get(served["url"] + "/v1/tasks", timeout=10).json()["tasks"]
    by = {t["task"]: t for t in tasks}
    assert set(by) == {
        *("sentiment", "pairs", "ner", "srl", "topic-a", "topic-b", "translate"),
        *("lora-a", "lora-b", "lora-ner"),
    }
    assert by["translate"]["type"] == "seq2seq"
    assert by["sentiment"]["type"] == "classification"
    assert by["pairs"]["type"] == "pair_classification"
    assert by["ner"]["type"] == "token_classification"
    assert by["ner"]["labels"] == NER_LABELS
    assert by["srl"]["type"] == "srl" and by["srl"]["labels"] == SRL_LABELS
    for t in tasks:
        assert set(t) == {"task", "type", "labels", "model", "quantized", "load_error"}
        assert t["load_error"] is None and t["quantized"] is None
        assert set(t["model"]) == {"name", "version", "metric", "value", "per_class"}
        assert t["model"]["version"].startswith("v")
    # dev evidence per class (per entity type for NER) of the served version, from the registry
    assert set(by["sentiment"]["model"]["per_class"]) == set(by["sentiment"]["labels"])
    assert set(by["ner"]["model"]["per_class"]) == {"PER", "LOC"}
    assert set(by["ner"]["model"]["per_class"]["PER"]) == {"precision", "recall", "f1", "support"}
    spec = requests.get(served["url"] + "/openapi.json", timeout=10).json()
    assert {"/healthz", "/v1/tasks", "/v1/predict/{task}", "/v1/fill-mask", "/v1/generate"} <= set(
        spec["paths"]
    )
    predict = spec["paths"]["/v1/predict/{task}"]["post"]
    assert "inputs" in predict["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"200", "400", "404", "413", "422"} <= set(predict["responses"])
    schemas = set(spec["components"]["schemas"])
    assert {"PredictResponse", "TokenPrediction", "SrlPrediction", "ErrorResponse"} <= schemas
    # every task type's input shape is in the request schema (srl's object among them)
    request = predict["requestBody"]["content"]["application/json"]["schema"]
    assert "SrlInput" in request["$defs"]
    docs = requests.get(served["url"] + "/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_classification_and_pairs_follow_the_schema(served):
    r = _post(served, "/v1/predict/sentiment", {"inputs": ["a fine film", "dull", "word " * 500]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "sentiment" and set(body["model"]) == {"name", "version"}
    preds = body["predictions"]
    assert len(preds) == 3
    for p in preds:
        assert set(p) == {"label", "score", "scores", "truncated"}
        assert set(p["scores"]) == {"negative", "positive"}
        assert abs(sum(p["scores"].values()) - 1) < 1e-4
        assert p["score"] == max(p["scores"].values()) and p["label"] in p["scores"]
    assert [p["truncated"] for p in preds] == [False, False, True]
    r = _post(served, "/v1/predict/pairs", {"inputs": [["a man sleeps", "a person rests"]]})
    assert r.status_code == 200, r.text
    assert set(r.json()["predictions"][0]["scores"]) == {"entailment", "neutral", "contradiction"}


def test_token_classification_strings_and_word_lists(served):
    text = "John  Smith flew to Paris"
    r = _post(served, "/v1/predict/ner", {"inputs": [text, "x " * 80]})
    assert r.status_code == 200, r.text
    first, long_ = r.json()["predictions"]
    assert len(first["tags"]) == 5 and set(first["tags"]) <= set(NER_LABELS)
    for e in first["entities"]:
        assert set(e) == {"label", "text", "start", "end", "score"}
        assert text[e["start"] : e["end"]] == e["text"]  # character offsets
    assert len(long_["tags"]) == 80 and long_["truncated"] is True  # a tag per word, always
    words = ["John", "Smith", "flew", "to", "Paris"]
    r = _post(served, "/v1/predict/ner", {"inputs": [words], "is_split_into_words": True})
    assert r.status_code == 200, r.text
    p = r.json()["predictions"][0]
    assert len(p["tags"]) == 5
    for e in p["entities"]:
        assert 0 <= e["start"] < e["end"] <= 5  # word indices, end exclusive
        assert " ".join(words[e["start"] : e["end"]]) == e["text"]
    # the word-list and the string form of the same sentence get the same tags
    assert p["tags"] == first["tags"]


def test_semantic_roles_for_words_and_text(served):
    words = ["Yesterday", "John", "bought", "a", "car"]
    r = _post(
        served,
        "/v1/predict/srl",
        {"inputs": [{"words": words, "predicate": 2}, {"text": " ".join(words), "predicate": 2}]},
    )
    assert r.status_code == 200, r.text
    by_words, by_text = r.json()["predictions"]
    for p in (by_words, by_text):
        assert set(p) == {"labels", "predicate", "arguments", "truncated"}
        assert len(p["labels"]) == 5 and p["labels"][2] == "V" and p["predicate"] == 2
        assert set(p["labels"]) <= set(SRL_LABELS) | {"V"}
        for a in p["arguments"]:
            assert set(a) == {"label", "head", "text", "score"}
            assert a["head"] != 2 and words[a["head"]] == a["text"]
            assert p["labels"][a["head"]] == a["label"] != "O"
    assert by_words == by_text  # the same sentence either way
    # another predicate of the same words is another question: the model is told which
    other = _post(served, "/v1/predict/srl", {"inputs": [{"words": words, "predicate": 4}]})
    assert other.status_code == 200 and other.json()["predictions"][0]["labels"][4] == "V"
    # a predicate the model never sees (past max_seq_len) is answered, marked truncated
    long_ = _post(served, "/v1/predict/srl", {"inputs": [{"words": ["w"] * 60, "predicate": 59}]})
    p = long_.json()["predictions"][0]
    assert long_.status_code == 200 and p["truncated"] is True and p["arguments"] == []
    assert len(p["labels"]) == 60 and p["labels"][59] == "V"
    # a bad predicate is named, with the range it must be in
    bad = _post(served, "/v1/predict/srl", {"inputs": [{"words": words, "predicate": 7}]})
    msg = bad.json()["error"]["message"]
    assert bad.status_code == 422 and "predicate" in msg and "out of range" in msg and "0..4" in msg


def test_fill_mask_and_generate(served):
    r = _post(served, "/v1/fill-mask", {"inputs": ["the [MASK] is [MASK] ."], "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == "tiny-bert"
    masks = body["predictions"][0]["masks"]
    assert len(masks) == 2 and all(len(m) == 3 for m in masks)
    assert all(isinstance(c["token"], str) and 0 <= c["score"] <= 1 for m in masks for c in m)
    r = _post(
        served,
        "/v1/generate",
        {
            "inputs": ["once upon a time", "the"],
            "max_new_tokens": 4,
            "temperature": 0.7,
            "top_k": 5,
        },
    )
    assert r.status_code == 200, r.text
    gens = r.json()["predictions"]
    assert len(gens) == 2 and all(
        set(g) == {"text", "tokens", "prompt_tokens", "truncated", "finish_reason"} for g in gens
    )
    assert all(0 <= g["tokens"] <= 4 for g in gens)
    assert _post(served, "/v1/fill-mask", {"inputs": ["no mask here"]}).status_code == 422


def _sse(served, body) -> list[dict]:
    """The events of a streamed /v1/generate, parsed as they arrive."""
    with requests.post(
        served["url"] + "/v1/generate", json={**body, "stream": True}, timeout=30, stream=True
    ) as r:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[len("data: ") :]) for line in r.iter_lines() if line]


def test_generation_streams_stops_and_batches_across_requests(served):
    """Streamed events add up to the non-streamed text; a stop sequence ends the text before
    it (streamed or not); concurrent requests share generate calls."""
    body = {"inputs": ["once upon a time"], "max_new_tokens": 12}
    whole = _post(served, "/v1/generate", body).json()["predictions"][0]
    events = _sse(served, {**body, "inputs": body["inputs"]})
    *deltas, last = events
    assert last["done"] is True and all(set(e) == {"text"} for e in deltas)
    assert "".join(e["text"] for e in deltas) == last["text"] == whole["text"]
    assert last["tokens"] == whole["tokens"] and len(deltas) >= 2
    text = whole["text"]
    assert len(text) >= 6, whole  # the tiny model writes something to cut
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = text[: text.find(stop)]
    stopped = _post(served, "/v1/generate", {**body, "stop": [stop, "never-said"]}).json()
    assert stopped["predictions"][0]["text"] == cut
    assert stopped["predictions"][0]["finish_reason"] == "stop"
    *deltas, last = _sse(served, {**body, "stop": [stop]})
    assert "".join(e["text"] for e in deltas) == last["text"] == cut
    assert last["finish_reason"] == "stop"
    for bad in (
        {**body, "inputs": ["a", "b"], "stream": True},
        {**body, "stop": ["a", "b", "c", "d", "e"]},
        {**body, "stop": [""]},
        {**body, "stream": "yes"},
    ):
        r = _post(served, "/v1/generate", bad)
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_input", r.text

    before = _stats("GenerateDeployment")["model_calls"]
    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda _: _post(served, "/v1/generate", body).json(), range(8)))
    assert all(a["predictions"][0]["text"] == text for a in answers)  # greedy: the same
    assert _stats("GenerateDeployment")["model_calls"] - before < 8
