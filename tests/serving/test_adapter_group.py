"""An adapter group over HTTP: three tasks' LoRA adapters on one copy of their base, requests of
every task sharing forwards, each answered as its own model would; a promotion swaps one task's
adapters without reloading the base; a version that cannot join the group is refused with the
reason while the group keeps serving."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from serving_fixtures import close, publish_adapter_task, publish_task

from .common import _post, _stats

TASKS = ("lora-a", "lora-b", "lora-ner")
TEXT = "a quiet story about ships"


def _own_answer(reg, task: str, text: str = TEXT) -> dict:
    """What the task's model alone answers (its adapters merged: a plain task model)."""
    from lmplatform.serving.loading import load_task

    own = load_task(reg, task)
    return own.predict(own.parse([text]))[0]


def _check_answers(served, reg, versions: dict[str, str]) -> None:
    for task in TASKS:
        r = _post(served, f"/v1/predict/{task}", {"inputs": [TEXT]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["version"] == versions[task]
        got, want = body["predictions"][0], _own_answer(reg, task)
        assert close(got, want), (task, got, want)


def _wait_version(served, task: str, version: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        r = _post(served, f"/v1/predict/{task}", {"inputs": [TEXT]})
        if r.status_code == 200 and r.json()["model"]["version"] == version:
            return
        time.sleep(0.5)
    raise AssertionError(f"{task} never served {version}")


def test_adapter_group_shares_base_forwards_and_swaps_one_adapter(served):
    from lmplatform.registry.store import Registry

    reg = Registry(served["registry"])
    versions = {t: reg.best(t) for t in TASKS}
    _check_answers(served, reg, versions)
    before = _stats("adapters-0")
    assert before["base_loads"] == 1

    bodies = [(TASKS[i % 3], {"inputs": [f"ship log entry {i}"]}) for i in range(30)]
    barrier = threading.Barrier(len(bodies))

    def one(args):
        task, b = args
        barrier.wait()
        return _post(served, f"/v1/predict/{task}", b)

    with ThreadPoolExecutor(len(bodies)) as ex:
        rs = list(ex.map(one, bodies))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    calls = _stats("adapters-0")["encoder_calls"] - before["encoder_calls"]
    assert calls < 30, calls  # 30 requests over three tasks, fewer base forwards

    # promoting one task loads its adapters only: the base stays, the others answer as before
    new = publish_adapter_task(
        reg, served["root"], "lora-a", "classification", ["a", "b", "c"], seed=7
    )
    _wait_version(served, "lora-a", new)
    _check_answers(served, reg, {**versions, "lora-a": new})
    assert _stats("adapters-0")["base_loads"] == 1

    # a whole model promoted into the group cannot join it: the group keeps lora-b's adapters
    # and says why on /v1/tasks, until the promotion is rolled back
    from lmplatform.models.io import from_pretrained
    from lmplatform.models.tasks import encoder_of

    base = reg.local_path("pretrained", "tiny-bert", "v0001")
    whole = publish_task(
        reg,
        served["root"],
        "lora-b",
        encoder_of(from_pretrained(base)),
        "classification",
        ["x", "y"],
        base / "tokenizer.json",
        seed=5,
    )
    deadline = time.time() + 60
    while True:
        info = {
            t["task"]: t
            for t in requests.get(served["url"] + "/v1/tasks", timeout=30).json()["tasks"]
        }
        if info["lora-b"].get("load_error") or time.time() > deadline:
            break
        time.sleep(0.5)
    assert (
        f"lora-b@{whole} is a whole model, not an adapter version" in info["lora-b"]["load_error"]
    )
    r = _post(served, "/v1/predict/lora-b", {"inputs": [TEXT]})
    assert r.status_code == 200 and r.json()["model"]["version"] == versions["lora-b"]
    reg.rollback("lora-b", versions["lora-b"], force=True)
    _check_answers(served, reg, {**versions, "lora-a": new})
