"""Bad requests and hard times: error codes, 415s, overload and timeouts, a replica killed under load, the metrics, a 500-body fuzz."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .common import _post

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
