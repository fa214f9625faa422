"""Ray Serve over real HTTP on 127.0.0.1: every route and error code, a 500-body fuzz, batching,
shared-encoder heads, hot swap under load, replica autoscaling, health checks."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving_fixtures import NER_LABELS, SRL_LABELS, build_registry, publish_task

APP = "lm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory, sample_dir):
    """One Serve instance for the module: app `lm` at / with every kind of model."""
    from ray import serve

    from lmplatform.serving.config import ServeConfig
    from lmplatform.serving.graph import deploy

    root = tmp_path_factory.mktemp("serve")
    registry = build_registry(root, sample_dir)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(
        registry=str(registry),
        port=port,
        fill_mask_model="tiny-bert",
        generate_model="tiny-gpt",
        shared_encoder_groups=[["topic-a", "topic-b"]],
        max_batch_size=32,
        batch_wait_timeout_s=0.05,
        max_inputs=16,
        max_body_bytes=200_000,
        replica_cpus=0,
        refresh_s=0.5,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        app_name=APP,
    )
    deploy(cfg)  # one hop: an application per task besides `lm` (topic-a/b share the ingress)
    yield {"url": f"http://127.0.0.1:{port}", "registry": registry, "root": root, "cfg": cfg}
    serve.shutdown()


def _post(served, path, body, **kw):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    kw.setdefault("headers", {"Content-Type": "application/json"})
    return requests.post(served["url"] + path, data=data, timeout=30, **kw)


def _stats(deployment: str) -> dict:
    """A deployment's stats; a task's own deployment lives in its own application."""
    from ray import serve

    app = f"{APP}-{deployment[len('task-') :]}" if deployment.startswith("task-") else APP
    return serve.get_deployment_handle(deployment, app_name=app).stats.remote().result()


# ----------------------------------------------------------------------------- routes


def test_health_tasks_and_openapi(served):
    r = requests.get(served["url"] + "/healthz", timeout=10)
    assert (r.status_code, r.json()) == (200, {"status": "ok", "problems": []})
    tasks = requests.get(served["url"] + "/v1/tasks", timeout=10).json()["tasks"]
    by = {t["task"]: t for t in tasks}
    assert set(by) == {"sentiment", "pairs", "ner", "srl", "topic-a", "topic-b", "translate"}
    assert by["translate"]["type"] == "seq2seq"
    assert by["sentiment"]["type"] == "classification"
    assert by["pairs"]["type"] == "pair_classification"
    assert by["ner"]["type"] == "token_classification"
    assert by["ner"]["labels"] == NER_LABELS
    assert by["srl"]["type"] == "srl" and by["srl"]["labels"] == SRL_LABELS
    for t in tasks:
        assert set(t) == {"task", "type", "labels", "model", "load_error"}
        assert t["load_error"] is None
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
        set(g) == {"text", "tokens", "truncated", "finish_reason"} for g in gens
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


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/predict/sentiment", b"{not json", 400),
        ("/v1/predict/sentiment", b'{"inputs": ["\xff\xfe"]}', 400),  # invalid UTF-8
        ("/v1/predict/nosuchtask", {"inputs": ["x"]}, 404),
        ("/v1/nosuchroute", {"inputs": ["x"]}, 404),
        ("/v1/predict/sentiment", {"inputs": ["x"] * 17}, 413),
        ("/v1/predict/sentiment", {"inputs": ["y" * 300_000]}, 413),  # body over the limit
        ("/v1/predict/sentiment", {"inputs": []}, 422),
        ("/v1/predict/sentiment", {"inputs": [""]}, 422),
        ("/v1/predict/sentiment", {"inputs": ["   "]}, 422),
        ("/v1/predict/sentiment", {"inputs": [1, 2]}, 422),
        ("/v1/predict/sentiment", {"inputs": "a string, not a list"}, 422),
        ("/v1/predict/sentiment", {"input": ["typo in the field name"]}, 422),
        ("/v1/predict/sentiment", {"inputs": ["x"], "extra": 1}, 422),
        ("/v1/predict/sentiment", {"inputs": [["a", "b"]]}, 422),  # a pair for a single-text task
        ("/v1/predict/pairs", {"inputs": ["only one text"]}, 422),
        ("/v1/predict/pairs", {"inputs": [["a", "b", "c"]]}, 422),
        ("/v1/predict/ner", {"inputs": ["x"], "is_split_into_words": True}, 422),
        ("/v1/predict/ner", {"inputs": [["two words"]], "is_split_into_words": True}, 422),
        ("/v1/predict/sentiment", {"inputs": ["x"], "is_split_into_words": True}, 422),
        ("/v1/predict/sentiment", '{"inputs": ["\\ud800"]}', 422),  # lone surrogate
        ("/v1/predict/srl", {"inputs": [{"words": ["a", "b"], "predicate": 2}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"words": ["a", "b"], "predicate": -1}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"words": [], "predicate": 0}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"words": ["a b"], "predicate": 0}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"text": "   ", "predicate": 0}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"words": ["a"], "text": "a", "predicate": 0}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"predicate": 0}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"words": ["a"]}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"words": ["a"], "predicate": "0"}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"words": ["a"], "predicate": True}]}, 422),
        ("/v1/predict/srl", {"inputs": [{"words": ["a"], "predicate": 0, "x": 1}]}, 422),
        ("/v1/predict/srl", {"inputs": ["a sentence without a predicate"]}, 422),
        ("/v1/predict/sentiment", {"inputs": [{"words": ["a"], "predicate": 0}]}, 422),
        ("/v1/predict/sentiment", [1, 2, 3], 422),
        ("/v1/fill-mask", {"inputs": ["[MASK]"], "top_k": 0}, 422),
        ("/v1/generate", {"inputs": ["x"], "max_new_tokens": "ten"}, 422),
        ("/v1/generate", {"inputs": ["x"], "temperature": -1}, 422),
        ("/v1/generate", {"inputs": ["x"], "temperature": 1e-40}, 422),  # was NaN, a 500
        ("/v1/predict/sentiment", '{"inputs": ["x"], "num_beams": ' + "9" * 4400 + "}", 400),
    ],
)
def test_error_codes(served, path, body, status):
    r = _post(served, path, body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"type", "message"} and err["message"]


def test_wrong_method_and_posts_that_are_not_json_get_415(served):
    r = requests.get(served["url"] + "/v1/predict/sentiment", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    for headers in (
        {},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ):
        # what a web page can send cross-site without a preflight: refused before parsing
        r = requests.post(
            served["url"] + "/v1/predict/sentiment",
            data=b'{"inputs": ["ok"]}',
            headers=headers,
            timeout=10,
        )
        assert r.status_code == 415, (headers, r.text)
        assert r.json()["error"]["type"] == "unsupported_media_type"
    r = _post(
        served,
        "/v1/predict/sentiment",
        b'{"inputs": ["ok"]}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200


def test_overload_gets_503_at_once_and_slow_answers_504(served):
    """A second application with a bound of 2 requests in progress and a 2 s timeout, on a
    task whose batches wait 10 s to fill: a burst of 12 gets two 504s after ~2 s and ten 503s
    with Retry-After before any timeout; then the app answers again. (The bounds are the
    configured times, with room for a loaded machine: a 503 comes before the 2 s timeout, a 504
    after it and long before the 10 s batch would have answered.)"""

    from lmplatform.serving.config import ServeConfig
    from lmplatform.serving.graph import delete, deploy

    cfg = ServeConfig(
        registry=str(served["registry"]),
        tasks=["sentiment"],
        app_name="limited",
        route_prefix="/limited",
        max_batch_size=64,
        batch_wait_timeout_s=10.0,
        max_queued_requests=2,
        request_timeout_s=2.0,
        retry_after_s=5,
        replica_cpus=0,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
    )
    deploy(cfg)
    url = served["url"] + "/limited/v1/predict/sentiment"
    try:

        def call(i):
            if i:  # the first two are admitted before the burst
                time.sleep(0.3)
            t0 = time.time()
            r = requests.post(url, json={"inputs": [f"text {i}"]}, timeout=30)
            return r.status_code, time.time() - t0, r.headers.get("Retry-After"), r.json()

        with ThreadPoolExecutor(12) as ex:
            results = list(ex.map(call, [0, 0] + list(range(1, 11))))
        codes = sorted(c for c, *_ in results)
        assert codes == [503] * 10 + [504] * 2, results
        for code, seconds, retry, body in results:
            if code == 503:
                assert seconds < 1.9 and retry == "5" and body["error"]["type"] == "overloaded"
            else:
                assert 1.9 < seconds < 8.0 and body["error"]["type"] == "timeout"
        assert requests.get(served["url"] + "/limited/healthz", timeout=10).status_code == 200
    finally:
        delete(cfg)


@pytest.mark.parametrize("one_hop", [False, True], ids=["two-hops", "one-hop"])
def test_a_replica_killed_under_load_loses_at_most_the_requests_in_flight(served, one_hop):
    """Two sentiment replicas in their own application; 8 clients for ~8 s; one replica is
    SIGKILLed after 2 s. Behind the ingress (two hops) requests in flight on it are sent again
    to the live one and any failure is a 503 in the envelope. With one hop nothing of ours sits
    between the HTTP front and the dead replica: Serve's proxy answers those in flight with its
    own 500 (measured 0-5 of 1,029-1,155; docs/serving.md). What can fail is what was in
    flight when it died, whatever the machine's speed: each client has one request at a time,
    so one hop may lose about one per client (bound: two, for requests routed before Serve
    noticed), two hops none that the ingress's retries do not absorb (bound: one per client)."""
    import os
    import signal

    from ray import serve

    from lmplatform.serving.config import ServeConfig
    from lmplatform.serving.graph import delete, deploy, task_app_name

    cfg = ServeConfig(
        registry=str(served["registry"]),
        tasks=["sentiment"],
        app_name="faulty",
        route_prefix="/faulty",
        one_hop=one_hop,
        replica_cpus=0,
        refresh_s=0,
        autoscaling={"min_replicas": 2, "max_replicas": 2},
    )
    deploy(cfg)
    app = task_app_name(cfg, "sentiment") if one_hop else "faulty"
    handle = serve.get_deployment_handle("task-sentiment", app_name=app)
    pids = set()
    deadline = time.time() + 30
    while len(pids) < 2 and time.time() < deadline:
        pids.add(handle.stats.remote().result()["pid"])
    assert len(pids) == 2, pids
    url = served["url"] + "/faulty/v1/predict/sentiment"
    stop = time.time() + 8
    results = []

    def client(k):
        s = requests.Session()
        while time.time() < stop:
            try:
                r = s.post(url, json={"inputs": [f"a film {k}"]}, timeout=30)
                results.append((r.status_code, r.text[:200]))
            except requests.RequestException as e:  # a dropped connection counts as a failure
                results.append((0, repr(e)))

    try:
        with ThreadPoolExecutor(8) as ex:
            futures = [ex.submit(client, k) for k in range(8)]
            time.sleep(2)
            os.kill(sorted(pids)[0], signal.SIGKILL)
            for f in futures:
                f.result()
        failed = [r for r in results if r[0] != 200]
        print(f"replica kill ({one_hop=}): {len(results)} requests, {len(failed)} failed")
        assert len(results) - len(failed) >= 100, (len(results), failed[:5])
        assert len(failed) <= (16 if one_hop else 8), (len(results), failed[:5])
        for code, text in failed if not one_hop else ():
            assert code == 503 and json.loads(text)["error"]["type"] == "unavailable", text
    finally:
        delete(cfg)


def _prometheus(name: str, **labels) -> list[float]:
    """Values of metric `name` whose labels include `labels`, from this node's metrics agent."""
    import re

    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out = []
    for m in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            out.append(float(m.group(2)))
    return out


def test_prometheus_metrics_per_task_and_version(served):
    version = next(
        t["model"]["version"]
        for t in requests.get(served["url"] + "/v1/tasks", timeout=10).json()["tasks"]
        if t["task"] == "sentiment"
    )
    for text in ("a fine film", "dull", "moving", "flat", "great"):
        assert _post(served, "/v1/predict/sentiment", {"inputs": [text]}).status_code == 200
    assert _post(served, "/v1/predict/sentiment", {"inputs": [""]}).status_code == 422
    tags = {"task": "sentiment", "version": version}
    deadline = time.time() + 180  # Ray exports metrics every few seconds (slower when loaded)
    while True:
        ok = _prometheus("ray_lmplatform_requests_total", **tags, outcome="ok")
        bad = _prometheus("ray_lmplatform_requests_total", **tags, outcome="invalid")
        calls = _prometheus("ray_lmplatform_batch_inputs_count", **tags)
        latency = _prometheus("ray_lmplatform_request_latency_ms_count", **tags)
        live = _prometheus("ray_lmplatform_model_version", **tags)
        # the counter and the histogram are exported separately: after earlier tests' load
        # one was seen at 1,513 and the other at 440; wait until both caught up
        if (
            sum(ok) >= 5
            and sum(bad) >= 1
            and calls
            and live
            and sum(latency) >= sum(ok) + sum(bad) - 0.5
        ) or time.time() > deadline:
            break
        time.sleep(2)
    assert sum(ok) >= 5 and sum(bad) >= 1, (ok, bad)
    assert 1 <= sum(calls) <= sum(ok) and sum(latency) >= sum(ok) + sum(bad) - 0.5
    assert max(live) == 1.0


def _hostile_bodies(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(path, body) pairs that are all invalid by construction: each is a 4xx."""
    rng = random.Random(seed)
    paths = [
        "/v1/predict/sentiment",
        "/v1/predict/pairs",
        "/v1/predict/ner",
        "/v1/predict/topic-a",
        "/v1/fill-mask",
        "/v1/generate",
    ]

    def junk(depth=0):
        kinds = ["int", "float", "null", "bool", "dict", "list", "str"]
        k = rng.choice(kinds if depth < 5 else kinds[:4])
        if k == "int":
            return rng.randint(-(2**70), 2**70)
        if k == "float":
            return rng.choice([1e308, -0.0, 3.14])
        if k == "null":
            return None
        if k == "bool":
            return rng.random() < 0.5
        if k == "str":
            return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 20)))
        if k == "dict":
            return {str(rng.random()): junk(depth + 1) for _ in range(rng.randint(0, 3))}
        return [junk(depth + 1) for _ in range(rng.randint(1, 3))]

    def bad_inputs():
        # never a valid inputs list: a non-list, or a list holding a non-string / nested junk
        return rng.choice(
            [
                junk(),
                [junk(), {"a": 1}],
                [[["nested"]]],
                [None],
                [12],
                [{"text": "x"}],
                [],
                [""],
            ]
        )

    out = []
    for i in range(n):
        path = rng.choice(paths)
        kind = i % 10
        if kind == 0:  # random bytes
            body = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 300)))
            if body.strip().startswith((b"{", b"[", b'"')) or body.strip()[:1].isdigit():
                body = b"\x00" + body
        elif kind == 1:  # invalid UTF-8 inside a JSON string
            body = b'{"inputs": ["ok \xc3\x28 \xa0\xa1"]}'
        elif kind == 2:  # wrong types / nested junk
            body = json.dumps({"inputs": bad_inputs()}).encode()
        elif kind == 3:  # missing or misspelled fields, top-level non-objects
            body = json.dumps(rng.choice([{}, {"input": ["x"]}, [], "inputs", 42, None, junk()]))
            body = body.encode()
            if body in (b"{}",):
                body = b"{}"
        elif kind == 4:  # huge string in the wrong place / body over the limit
            big = "z" * rng.choice([50_000, 250_000])
            body = json.dumps(
                {"inputs": [big], big[:10]: 1} if len(big) < 100_000 else {"inputs": [big]}
            )
            body = body.encode()
        elif kind == 5:  # deep nesting
            d = rng.choice([50, 5000, 90_000])
            body = b'{"inputs": ' + b"[" * d + b"]" * d + b"}"
        elif kind == 6:  # lone surrogates, NaN, truncated JSON
            body = rng.choice(
                [
                    b'{"inputs": ["\\udc80"]}',
                    b'{"inputs": NaN}',
                    b'{"inputs": ["a"',
                    b'{"inputs": [Infinity]}',
                ]
            )
        elif kind == 7:  # right fields, wrong value types for the extras
            body = json.dumps(
                {
                    "inputs": ["a [MASK]"],
                    "top_k": rng.choice(["3", 1.5, -1, None, [3]]),
                    "is_split_into_words": "yes",
                    "max_new_tokens": 10**9,
                }
            ).encode()
        elif kind == 8:  # too many inputs
            body = json.dumps({"inputs": ["w"] * rng.randint(17, 200)}).encode()
        else:  # unknown task with junk
            path = f"/v1/predict/{rng.choice(['', 'x' * 300, '..%2f..', 'sentiment/extra', '%00'])}"
            body = json.dumps({"inputs": junk()}).encode()
        out.append((path, body))
    return out


def test_fuzz_500_hostile_bodies_get_only_4xx(served):
    bodies = _hostile_bodies(500)
    session = requests.Session()

    def send(pb):
        path, body = pb
        r = session.post(
            served["url"] + path,
            data=body,
            timeout=30,
            headers={"Content-Type": "application/json"},
        )
        return path, body[:80], r.status_code, r.text[:200]

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(send, bodies))
    bad = [r for r in results if not 400 <= r[2] < 500]
    assert not bad, bad[:5]
    assert len({r[2] for r in results}) >= 4  # the mix reached 400, 404, 413 and 422
    r = _post(served, "/v1/predict/sentiment", {"inputs": ["still answering"]})
    assert r.status_code == 200, r.text


# ----------------------------------------------------------------------------- batching


def _concurrent(served, path, bodies):
    barrier = threading.Barrier(len(bodies))

    def one(b):
        barrier.wait()
        return _post(served, path, b)

    with ThreadPoolExecutor(len(bodies)) as ex:
        return list(ex.map(one, bodies))


def test_32_concurrent_requests_take_fewer_than_32_model_calls(served):
    before = _stats("task-sentiment")["model_calls"]
    rs = _concurrent(
        served, "/v1/predict/sentiment", [{"inputs": [f"text {i}"]} for i in range(32)]
    )
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200][:3]
    calls = _stats("task-sentiment")["model_calls"] - before
    assert 1 <= calls < 32, calls
    # batching does not mix answers up: each reply is the one-request answer for its text
    single = _post(served, "/v1/predict/sentiment", {"inputs": ["text 7"]}).json()["predictions"][0]
    assert abs(rs[7].json()["predictions"][0]["score"] - single["score"]) < 1e-4


def test_translation_requests_are_batched_across_clients_within_their_limits(served):
    before = _stats("task-translate")["model_calls"]
    bodies = [
        {"inputs": [f"The river runs past house {i} ."], "num_beams": 1 + i % 2} for i in range(16)
    ]
    rs = _concurrent(served, "/v1/predict/translate", bodies)
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200][:3]
    calls = _stats("task-translate")["model_calls"] - before
    assert 1 <= calls < 16, calls  # two decoding settings, batched across clients
    for r in rs:
        (p,) = r.json()["predictions"]
        assert set(p) == {"text", "tokens", "truncated"}
        assert 0 <= p["tokens"] <= 12 and isinstance(p["text"], str)
    # batching does not mix answers up: each reply is the one-request answer for its input
    alone = _post(served, "/v1/predict/translate", bodies[5]).json()["predictions"][0]
    assert alone == rs[5].json()["predictions"][0]
    # the task's limits (decoding.max_beams 4, max_new_tokens 12): 422 naming the bound
    for body, message in [
        ({"inputs": ["x"], "num_beams": 5}, "num_beams=5: allowed 1..4"),
        ({"inputs": ["x"], "max_new_tokens": 13}, "max_new_tokens=13: allowed 1..12"),
        ({"inputs": ["x"], "num_beams": 1.5}, "num_beams"),
    ]:
        r = _post(served, "/v1/predict/translate", body)
        assert r.status_code == 422 and message in r.text, (body, r.text)
    r = _post(served, "/v1/predict/sentiment", {"inputs": ["x"], "num_beams": 2})
    assert r.status_code == 422 and "only for seq2seq tasks" in r.text


def test_shared_encoder_group_runs_one_encoder_forward_for_both_tasks(served):
    from lmplatform.registry.store import Registry
    from lmplatform.serving.loading import load_task

    before = _stats("shared-encoder-0")["encoder_calls"]
    bodies = [{"inputs": [f"news item {i}"]} for i in range(16)]
    barrier = threading.Barrier(32)

    def one(args):
        task, b = args
        barrier.wait()
        return task, _post(served, f"/v1/predict/{task}", b)

    jobs = [("topic-a", b) for b in bodies] + [("topic-b", b) for b in bodies]
    with ThreadPoolExecutor(32) as ex:
        rs = list(ex.map(one, jobs))
    assert all(r.status_code == 200 for _, r in rs)
    calls = _stats("shared-encoder-0")["encoder_calls"] - before
    assert calls < 32, calls  # 32 requests over two tasks, fewer encoder passes
    # the heads see the same features as each task's own model would
    reg = Registry(served["registry"])
    for task, got in (("topic-a", rs[3][1]), ("topic-b", rs[16 + 3][1])):  # "news item 3"
        own = load_task(reg, task)
        want = own.predict(own.parse(["news item 3"]))[0]["scores"]
        for k, v in want.items():
            assert abs(got.json()["predictions"][0]["scores"][k] - v) < 1e-4


# ----------------------------------------------------------------------------- hot swap


def test_hot_swap_under_load_fails_no_request(served):
    from lmplatform.models.io import from_pretrained
    from lmplatform.models.tasks import encoder_of
    from lmplatform.registry.store import Registry

    reg = Registry(served["registry"])
    old = reg.best("sentiment")
    stop = threading.Event()
    seen: list[tuple[float, int, str | None]] = []

    def client():
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(
                    served["url"] + "/v1/predict/sentiment",
                    json={"inputs": ["swap me"]},
                    timeout=30,
                )
                v = r.json()["model"]["version"] if r.status_code == 200 else None
                seen.append((time.time(), r.status_code, v))
            except Exception as e:  # a dropped connection is a failure too
                seen.append((time.time(), -1, repr(e)))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    parent = encoder_of(from_pretrained(reg.local_path("pretrained", "tiny-bert", "v0001")))
    tok = reg.local_path("pretrained", "tiny-bert", "v0001") / "tokenizer.json"
    new = publish_task(
        reg,
        served["root"],
        "sentiment",
        parent,
        "classification",
        ["negative", "positive"],
        tok,
        value=0.9,
        seed=7,
    )
    promoted_at = time.time()
    deadline = promoted_at + 60
    while time.time() < deadline and not any(v == new for _, _, v in seen[-5:]):
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    failed = [s for s in seen if s[1] != 200]
    assert not failed, failed[:5]
    versions = [v for _, _, v in seen]
    assert old in versions and new in versions, (old, new, set(versions))
    first_new = versions.index(new)
    assert all(v == new for v in versions[first_new + 3 :])  # switched for good (1 replica)
    switch_s = next(t for t, _, v in seen if v == new) - promoted_at
    print(
        f"hot swap: {len(seen)} requests, 0 failed, new version served {switch_s:.1f}s after promotion"
    )
    info = {
        t["task"]: t for t in requests.get(served["url"] + "/v1/tasks", timeout=10).json()["tasks"]
    }
    assert (
        info["sentiment"]["model"]["version"] == new and info["sentiment"]["model"]["value"] == 0.9
    )


# ----------------------------------------------------------------------------- autoscaling


def _running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    st = serve.status().applications[app].deployments[deployment]
    return int(st.replica_states.get("RUNNING", 0))


def test_replicas_scale_up_under_load_and_back_down(served):

    from lmplatform.serving.graph import delete, deploy

    cfg = served["cfg"].model_copy(
        update={
            "tasks": ["sentiment"],
            "shared_encoder_groups": [],
            "fill_mask_model": None,
            "generate_model": None,
            "app_name": "scale",
            "route_prefix": "/scale",
            "batch_wait_timeout_s": 0.0,
            "max_batch_size": 1,
        }
    )
    cfg.autoscaling = cfg.autoscaling.model_copy(
        update={
            "min_replicas": 1,
            "max_replicas": 3,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 0.5,
            "downscale_delay_s": 2,
        }
    )
    deploy(cfg)
    try:
        assert _running_replicas("scale-sentiment", "task-sentiment") == 1
        stop = threading.Event()
        errors = []

        def client():
            s = requests.Session()
            while not stop.is_set():
                r = s.post(
                    served["url"] + "/scale/v1/predict/sentiment",
                    json={"inputs": ["load " * 30] * 8},
                    timeout=30,
                )
                if r.status_code != 200:
                    errors.append(r.status_code)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        peak, deadline = 1, time.time() + 90  # bounded: at most 90 s of load
        try:
            while time.time() < deadline and peak < 2:
                time.sleep(1)
                peak = max(peak, _running_replicas("scale-sentiment", "task-sentiment"))
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors
        assert peak >= 2, "sustained load did not add a replica"
        deadline = time.time() + 90
        while time.time() < deadline and _running_replicas("scale-sentiment", "task-sentiment") > 1:
            time.sleep(1)
        assert _running_replicas("scale-sentiment", "task-sentiment") == 1, (
            "replicas did not fall back"
        )
    finally:
        delete(cfg)


# ----------------------------------------------------------------------------- health


def test_health_check_fails_when_the_model_is_not_usable(served):
    from lmplatform.serving.deployments import TaskReplica

    replica = TaskReplica(str(served["registry"]), "sentiment", refresh_s=0)
    replica.check_health()  # a loaded model passes

    class Broken(type(replica.predictor.model.head)):
        def forward(self, x):
            raise RuntimeError("weights are gone")

    replica.predictor.model.head.__class__ = Broken
    with pytest.raises(RuntimeError, match="weights are gone"):
        replica.check_health()


def test_app_config_validates_and_builds(served, tmp_path):
    """serve/config.yaml is Ray Serve's schema; its args are a ServeConfig; the builder builds."""
    import importlib
    import sys

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from conftest import ROOT
    from lmplatform.serving.config import ServeConfig

    raw = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    app_cfg = schema.applications[0]
    assert app_cfg.import_path == "lmplatform.serving.app:build_app"
    args = {**app_cfg.args, "registry": str(served["registry"])}
    sys.path.insert(0, str(ROOT))
    try:
        mod = importlib.import_module(app_cfg.import_path.split(":")[0])
        assert importlib.import_module("serve.app").build_app is mod.build_app  # re-export
    finally:
        sys.path.remove(str(ROOT))
    app = mod.build_app(ServeConfig.model_validate(args))
    assert type(app).__name__ == "Application"
    with pytest.raises(ValueError, match="without a promoted best model"):
        mod.build_app(ServeConfig.model_validate({**args, "tasks": ["nope"]}))


def test_refresh_token_swaps_without_polling(served):
    """refresh_s=0 (no polling): a new best is served only after a redeploy with a new
    refresh_token (what `jobs/deploy.py --refresh` does), and then without a restart."""

    from lmplatform.models.io import from_pretrained
    from lmplatform.models.tasks import encoder_of
    from lmplatform.registry.store import Registry
    from lmplatform.serving.graph import delete, deploy

    reg = Registry(served["registry"])
    cfg = served["cfg"].model_copy(
        update={
            "tasks": ["pairs"],
            "shared_encoder_groups": [],
            "fill_mask_model": None,
            "generate_model": None,
            "app_name": "refresh",
            "route_prefix": "/refresh",
            "refresh_s": 0,
            "one_hop": False,  # the two-hop layout (every task behind the ingress) works too
        }
    )
    deploy(cfg)
    try:
        url = served["url"] + "/refresh/v1/predict/pairs"
        body = {"inputs": [["a", "b"]]}
        before = requests.post(url, json=body, timeout=30).json()["model"]["version"]
        parent = encoder_of(from_pretrained(reg.local_path("pretrained", "tiny-bert", "v0001")))
        tok = reg.local_path("pretrained", "tiny-bert", "v0001") / "tokenizer.json"
        labels = ["entailment", "neutral", "contradiction"]
        new = publish_task(
            reg, served["root"], "pairs", parent, "pair_classification", labels, tok, seed=3
        )
        time.sleep(2)
        assert requests.post(url, json=body, timeout=30).json()["model"]["version"] == before
        deploy(cfg.model_copy(update={"refresh_token": "now"}))
        assert requests.post(url, json=body, timeout=30).json()["model"]["version"] == new
    finally:
        delete(cfg)


def test_length_sorted_chunks_keep_each_answer_with_its_input(served):
    """A batch is sorted by length and run in chunks; answers come back in input order."""
    from lmplatform.registry.store import Registry
    from lmplatform.serving.loading import load_task

    p = load_task(Registry(served["registry"]), "ner")
    p.max_tokens = 40  # several chunks of a few rows
    texts = [" ".join(["w"] * n) + " Paris" for n in (9, 1, 30, 4, 17, 2, 11)]
    batch = p.predict(p.parse(texts))
    for t, got in zip(texts, batch):
        alone = p.predict(p.parse([t]))[0]
        assert got["tags"] == alone["tags"] and len(got["tags"]) == len(t.split())


# ----------------------------------------------------------------------------- a guarded app

GUARD_KEY = "guard-key-0123456789abcdef"


@pytest.fixture(scope="module")
def guarded(served):
    """A second application on the same Serve, at /guarded: API keys, every model behind the
    ingress (two hops), and a 1 s request timeout."""
    from lmplatform.serving.config import ServeConfig
    from lmplatform.serving.graph import delete, deploy

    keys = served["root"] / "guard-keys.txt"
    keys.write_text(GUARD_KEY + "\n")
    cfg = ServeConfig.model_validate(
        {
            **served["cfg"].model_dump(),
            "tasks": ["sentiment"],
            "shared_encoder_groups": [],
            "app_name": "guarded",
            "route_prefix": "/guarded",
            "one_hop": False,
            "request_timeout_s": 1.0,
            "auth": {"api_keys_file": str(keys)},
        }
    )
    deploy(cfg)
    yield {"url": served["url"] + "/guarded", "cfg": cfg}
    delete(cfg)


def _guarded(guarded, method, path, body=None, key=GUARD_KEY, **kw):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body)
    return requests.request(
        method, guarded["url"] + path, data=data, headers=headers, timeout=30, **kw
    )


def test_through_serve_only_get_healthz_skips_the_key_and_serve_routes_show_no_more(guarded):
    """Through Serve: GET /healthz is the one open route (not every path that ends in it, not
    another method); Serve's own /-/routes and /-/healthz answer without a key (the proxy's,
    not ours: docs/serving.md says so) and name no more than the route prefixes."""
    assert _guarded(guarded, "GET", "/healthz", key=None).status_code == 200
    assert _guarded(guarded, "HEAD", "/healthz", key=None).status_code == 200
    for method, path, body in [
        ("POST", "/healthz", {}),
        ("POST", "/v1/predict/healthz", {"inputs": ["x"]}),
        ("GET", "/v1/predict/sentiment/healthz", None),
        ("GET", "/v1/tasks", None),
        ("POST", "/v1/predict/sentiment", {"inputs": ["x"]}),
    ]:
        r = _guarded(guarded, method, path, body, key=None)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert "sentiment" not in r.text  # no task list before the key check
    r = _guarded(guarded, "POST", "/v1/predict/sentiment", {"inputs": ["a fine film"]})
    assert r.status_code == 200, r.text
    routes = requests.get(guarded["url"].rsplit("/", 1)[0] + "/-/routes", timeout=10)
    assert routes.status_code == 200 and "/guarded" in routes.json()
    assert GUARD_KEY not in routes.text


def test_the_bind_checked_is_the_one_serve_really_has(served):
    """The check reads Serve's controller, not the config's `host`: `serve deploy` binds where
    http_options.host says."""
    from lmplatform.serving.graph import check_bind, serve_bind_host
    from lmplatform.serving.security import AuthConfig, exposure_problem

    assert serve_bind_host() == "127.0.0.1"
    check_bind(served["cfg"], serve_bind_host())  # loopback: no keys needed
    with pytest.raises(ValueError, match="http_options.host=0.0.0.0 serves the API"):
        check_bind(served["cfg"], "0.0.0.0")  # what deploy() and build() refuse first
    problem = exposure_problem("0.0.0.0", AuthConfig(), "http_options.host")
    assert problem and problem.startswith("http_options.host=0.0.0.0 serves the API")
    assert exposure_problem("0.0.0.0", AuthConfig(allow_unauthenticated=True)) is None
    assert exposure_problem("127.0.0.2", AuthConfig()) is None  # all of 127/8 is loopback


def _guarded_stats(deployment: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name="guarded").stats.remote().result()


def test_the_worst_request_the_limits_allow_is_bounded_and_others_are_answered(guarded):
    """16 inputs (max_inputs) of the longest texts to fill-mask run in forwards within the
    token budget; 16 generations of 512 tokens (the most) time out at request_timeout_s (1 s)
    and their work stops; meanwhile a small request is answered, and no replica restarted.
    (A machine fast enough to finish them within 1 s answers 200: the stopping itself is
    also checked without Serve, test_api_security.py.)"""
    pids = {d: _guarded_stats(d)["pid"] for d in ("FillMaskDeployment", "GenerateDeployment")}
    long_text = " ".join(["[MASK] word"] * 200)
    r = _guarded(guarded, "POST", "/v1/fill-mask", {"inputs": [long_text] * 16, "top_k": 5})
    assert r.status_code == 200, r.text
    assert 0 < _guarded_stats("FillMaskDeployment")["largest_forward"] <= 256
    worst = {
        "inputs": [" ".join(["tale"] * (k + 1)) for k in range(16)],
        "max_new_tokens": 512,
        "temperature": 1.0,
    }
    small = {"inputs": ["once"], "max_new_tokens": 2}
    with ThreadPoolExecutor(2) as ex:
        big = ex.submit(_guarded, guarded, "POST", "/v1/generate", worst)
        time.sleep(0.3)
        t0 = time.perf_counter()
        quick = _guarded(guarded, "POST", "/v1/generate", small)
        quick_s = time.perf_counter() - t0
        big = big.result()
    assert quick.status_code == 200, quick.text
    assert quick_s < 1.0, quick_s  # it did not wait for the big one
    print(f"worst generate: {big.status_code}; a small one meanwhile: {quick_s:.2f} s")
    assert big.status_code in (200, 504), (big.status_code, big.text[:200])
    if big.status_code == 504:
        time.sleep(0.5)  # the step that was running when it timed out
        steps = _guarded_stats("GenerateDeployment")["steps"]
        time.sleep(1.5)
        after = _guarded_stats("GenerateDeployment")
        # a health check may run one step; the timed-out work would have run hundreds
        assert after["steps"] - steps <= 2, "the timed-out generation kept running"
        assert after["stopped"] >= 1
    r = _guarded(guarded, "POST", "/v1/generate", small)
    assert r.status_code == 200, r.text
    assert {d: _guarded_stats(d)["pid"] for d in pids} == pids  # no replica restarted


def _publish_unloadable(reg, root, task: str) -> str:
    """A version of `task` whose weights file is garbage (what a bad upload looks like)."""
    from lmplatform.models.io import from_pretrained
    from lmplatform.models.tasks import encoder_of

    parent = encoder_of(from_pretrained(reg.local_path("pretrained", "tiny-bert", "v0001")))
    tok = reg.local_path("pretrained", "tiny-bert", "v0001") / "tokenizer.json"
    bad = root / "unloadable"
    publish_task(reg, bad, "scratch", parent, "classification", ["negative", "positive"], tok)
    folder = bad / "scratch-0"
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    meta = {"kind": "task", "metric": "accuracy", "value": 0.99, "labels": ["negative", "positive"]}
    return reg.publish("tasks", task, folder, meta)


def test_a_promoted_best_that_cannot_load_keeps_the_previous_one_serving(served, guarded):
    """The bad best is reported (/v1/tasks with the reason behind the keys, /healthz degraded
    without it, a load-failure count) and retried with backoff, not every poll; a replica that
    starts meanwhile serves the previous best; a rollback clears it."""
    from lmplatform.registry.store import Registry
    from lmplatform.serving.deployments import TaskReplica

    reg = Registry(served["registry"])
    good = reg.best("sentiment")
    bad = _publish_unloadable(reg, served["root"], "sentiment")
    reg.promote("sentiment", bad, force=True)
    try:
        url = served["url"]
        deadline = time.time() + 30
        while time.time() < deadline:
            info = {
                t["task"]: t for t in requests.get(url + "/v1/tasks", timeout=10).json()["tasks"]
            }
            if info["sentiment"]["load_error"]:
                break
            time.sleep(0.5)
        assert info["sentiment"]["model"]["version"] == good
        assert info["sentiment"]["load_error"].startswith(f"sentiment@{bad} could not be loaded")
        r = _post(served, "/v1/predict/sentiment", {"inputs": ["still answering"]})
        assert r.status_code == 200 and r.json()["model"]["version"] == good
        health = requests.get(url + "/healthz", timeout=10).json()
        assert health["status"] == "degraded"
        assert health["problems"] == [
            f"task sentiment serves {good}, not its promoted best: see /v1/tasks"
        ]
        g = _guarded(guarded, "GET", "/healthz", key=None).json()
        assert g["status"] == "degraded" and bad not in json.dumps(g)  # no reason, no key
        tries = _stats("task-sentiment")
        time.sleep(6)  # 12 polls at refresh_s=0.5; the backoff (2, 4, 8 s …) allows 2
        assert _stats("task-sentiment")["load_failures"] - tries["load_failures"] <= 3
        fresh = TaskReplica(str(served["registry"]), "sentiment", refresh_s=0)
        assert fresh.predictor.ref.version == good and bad in fresh.load_error()
    finally:
        reg.rollback("sentiment", good, force=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        if requests.get(url + "/healthz", timeout=10).json()["status"] == "ok":
            break
        time.sleep(0.5)
    assert requests.get(url + "/healthz", timeout=10).json() == {"status": "ok", "problems": []}
