"""Changing what is served without failing requests: hot swap under load, autoscaling, health checks, the app config, refresh, chunked answers."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from serving_fixtures import publish_task

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
            "adapter_groups": [],
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
            "adapter_groups": [],
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
