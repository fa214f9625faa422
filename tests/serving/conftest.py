"""The Serve instance the serving tests share: one app with every kind of model (`served`) and a
guarded second app on it (`guarded`). Package-scoped: started once for tests/serving/ and shut
down after its last test, so later test folders run without it. The tests change its state
(hot swap, a killed replica, promotions) in the order of their files and of the tests in them."""

from __future__ import annotations

import pytest

from conftest import _free_port
from serving_fixtures import build_registry

from .common import APP, GUARD_KEY


@pytest.fixture(scope="package")
def served(ray_local, tmp_path_factory, sample_dir):
    """One Serve instance for tests/serving/: app `lm` at / with every kind of model."""
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
        adapter_groups=[["lora-a", "lora-b", "lora-ner"]],
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


@pytest.fixture(scope="package")
def guarded(served):
    """A second application on the same Serve, at /guarded: API keys, every model behind the
    ingress (two hops), a 1 s request timeout, and its sentiment model served in int8."""
    from lmplatform.serving.config import ServeConfig
    from lmplatform.serving.graph import delete, deploy

    keys = served["root"] / "guard-keys.txt"
    keys.write_text(GUARD_KEY + "\n")
    cfg = ServeConfig.model_validate(
        {
            **served["cfg"].model_dump(),
            "tasks": ["sentiment"],
            "shared_encoder_groups": [],
            "adapter_groups": [],
            "app_name": "guarded",
            "route_prefix": "/guarded",
            "one_hop": False,
            "request_timeout_s": 1.0,
            "auth": {"api_keys_file": str(keys)},
            "quantize": {"sentiment": "int8"},
        }
    )
    deploy(cfg)
    yield {"url": served["url"] + "/guarded", "cfg": cfg, "served": served}
    delete(cfg)
