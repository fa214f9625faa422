"""The cluster path for real: a two-node Ray on loopback (a head, and a second node joined with
`ray start --address`, each with its own --temp-dir) and an S3 API on 127.0.0.1 (moto). The demo
pipeline is submitted with `ray job submit` with output_dir, registry and one task's data on s3;
every artefact must land in the bucket (none in a local folder named `s3:`), a resubmission skips
every stage, and Serve replicas load from the s3 registry and hot-swap to a version promoted
there."""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT
from lmplatform import storage
from lmplatform.registry.store import Registry
from raycli import assert_all_skipped, cli_env, job_submit, start_head, start_node, stop

DASHBOARD = 8287


def _alive_nodes(env: dict) -> int:
    code = (
        "import ray; ray.init(logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else 0


@pytest.fixture(scope="module")
def cluster(s3_server):
    """Head (1 CPU) + worker node (1 CPU) on 127.0.0.1; both see the S3 endpoint and credentials
    through the environment, as cluster nodes would through theirs."""
    head = start_head(6411, DASHBOARD, agent_port=52381, num_cpus=1)
    client = {**cli_env(), "RAY_ADDRESS": "127.0.0.1:6411"}
    temp = tempfile.mkdtemp(prefix="c3w", dir="/tmp")  # the second node's own temp dir
    node = start_node(6411, 52382, 52383, temp, ["--num-cpus=1"])
    try:
        deadline = time.time() + 120
        while _alive_nodes(client) < 2:
            assert time.time() < deadline, "the second node did not join"
            time.sleep(2)
        yield {"temp": ["/tmp/ray", temp, *_head_temp(head)]}
    finally:
        stop(node)
        stop(head)


def _head_temp(head) -> list[str]:
    return [a.split("=", 1)[1] for a in head.args if str(a).startswith("--temp-dir=")]


def _submit(cluster, bucket: str, port: int) -> subprocess.CompletedProcess:
    data = f"{bucket}/data/sentiment"
    tasks = [
        {
            "config": "jobs/configs/tasks/sentiment-sample.yaml",
            "overrides": [f"task.train.path={data}/train.tsv", f"task.dev.path={data}/dev.tsv"],
        },
        {"config": "jobs/configs/tasks/ner-sample.yaml"},
    ]
    examples = {
        "sentiment-sample": ["a wonderful , moving film"],
        "ner-sample": ["John Smith flew to Paris ."],
    }
    return job_submit(
        DASHBOARD,
        [
            "jobs/pipeline.py",
            "--config",
            "jobs/configs/pipeline/demo.yaml",
            f"output_dir={bucket}/runs",
            f"registry={bucket}/registry",
            'pretrain.overrides=["train.max_steps=40", "train.eval_every=40", "train.checkpoint_every=20"]',
            f"tasks={json.dumps(tasks)}",
            'task_overrides=["search.num_samples=2", "train.epochs=1"]',
            f"examples={json.dumps(examples)}",
            f'serve.overrides=["replica_cpus=0", "port={port}", "autoscaling.max_replicas=1", "refresh_s=1"]',
        ],
        timeout=1200,
    )


def _tasks(port: int) -> dict[str, str]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/tasks", timeout=30).read()
    return {t["task"]: t["model"]["version"] for t in json.loads(body)["tasks"]}


def test_pipeline_on_two_nodes_keeps_every_artefact_in_s3(cluster, s3_bucket, sample_dir):
    bucket = s3_bucket
    storage.upload(sample_dir / "sentiment" / "train.tsv", f"{bucket}/data/sentiment/train.tsv")
    storage.upload(sample_dir / "sentiment" / "dev.tsv", f"{bucket}/data/sentiment/dev.tsv")
    port = 18900 + os.getpid() % 90

    first = _submit(cluster, bucket, port)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-5000:]
    assert "succeeded" in log and "[pipeline] preflight: ok" in log

    runs = set(storage.find(f"{bucket}/runs"))
    expected = [
        r"demo/state\.json",
        r"demo/report\.html",
        r"demo/report_files/pretrain_loss\.png",
        r"demo/report_files/trials_sentiment-sample\.png",
        r"bert-sample/config\.yaml",
        r"bert-sample/tokenizer/tokenizer\.json",
        r"bert-sample/examples/manifest\.json",
        r"bert-sample/examples/shards-\w+/.+\.parquet",
        r"bert-sample/metrics\.jsonl",
        r"bert-sample/tensorboard/.+",
        r"bert-sample/loss_curve\.png",
        r"ray/bert-sample/checkpoint_[^/]+/state/.+",
        r"sentiment-sample/trials\.csv",
        r"ner-sample/trials\.png",
        r"tune/sentiment-sample/.+/checkpoint_\d+/trial\.pt",
    ]
    for pattern in expected:
        assert any(re.fullmatch(pattern, f) for f in runs), (pattern, sorted(runs)[:80])
    metrics = storage.read_text(f"{bucket}/runs/bert-sample/metrics.jsonl").splitlines()
    assert json.loads(metrics[-1])["step"] == 40
    reg = Registry(f"{bucket}/registry")
    assert reg.versions("pretrained", "bert-sample") == ["v0001"]
    for task in ("sentiment-sample", "ner-sample"):
        assert reg.best(task) == "v0001"
        assert storage.exists(f"{bucket}/registry/tasks/{task}/best/00000001.json")
    # the task whose data came from s3 says so in its lineage
    meta = reg.metadata("tasks", "sentiment-sample", "v0001")
    assert meta["parent"] == "bert-sample@v0001"
    # nothing went to a local folder named after the scheme, on either node or in the project
    stray = subprocess.run(
        ["find", str(ROOT), *[t for t in cluster["temp"] if os.path.isdir(t)], "-name", "s3:"],
        capture_output=True,
        text=True,
    ).stdout
    assert not stray, stray
    # the endpoints serve what the s3 registry holds
    assert _tasks(port) == {"sentiment-sample": "v0001", "ner-sample": "v0001"}

    second = _submit(cluster, bucket, port)
    log2 = second.stdout + second.stderr
    assert second.returncode == 0, log2[-4000:]
    assert_all_skipped(
        log2, ["prepare", "pretrain", "finetune:sentiment-sample", "finetune:ner-sample", "deploy"]
    )
    assert reg.versions("pretrained", "bert-sample") == ["v0001"]  # nothing trained twice

    # hot swap: a better version promoted in the bucket is served without a redeploy
    folder = reg.local_path("tasks", "sentiment-sample", "v0001")
    keep = {k: v for k, v in meta.items() if k not in ("name", "version", "created", "files")}
    v2 = reg.publish("tasks", "sentiment-sample", folder, {**keep, "value": meta["value"] + 0.01})
    assert reg.promote("sentiment-sample", v2)[0]
    deadline = time.time() + 90
    while _tasks(port)["sentiment-sample"] != v2:
        assert time.time() < deadline, "replicas did not swap to the version promoted in s3"
        time.sleep(1)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict/sentiment-sample",
        data=json.dumps({"inputs": ["a great film"]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    pred = json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"][0]
    assert pred["label"] in ("negative", "positive")
