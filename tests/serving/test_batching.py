"""Dynamic batching: concurrent requests share model calls, translation within its limits, one encoder forward for a shared-encoder group."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from .common import _post, _stats

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
