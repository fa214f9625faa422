"""A guarded app on the same Serve: API keys, the worst request the limits allow, a promoted best that cannot load."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving_fixtures import publish_task

from .common import GUARD_KEY, _guarded, _post, _stats


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
    # its sentiment model is served in int8 (`quantize`): said in /v1/tasks, and its scores
    # are the fp32 model's within the rounding of int8 weights and activations
    tasks = _guarded(guarded, "GET", "/v1/tasks").json()["tasks"]
    assert [(t["task"], t["quantized"]) for t in tasks] == [("sentiment", "int8")]
    texts = ["a fine film", "dull and far too long", "the acting is wonderful", "I hated it"]
    int8 = _guarded(guarded, "POST", "/v1/predict/sentiment", {"inputs": texts}).json()
    fp32 = _post(guarded["served"], "/v1/predict/sentiment", {"inputs": texts}).json()
    for a, b in zip(int8["predictions"], fp32["predictions"]):
        assert abs(a["scores"]["positive"] - b["scores"]["positive"]) < 0.05, (a, b)
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
