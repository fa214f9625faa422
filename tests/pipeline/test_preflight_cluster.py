"""Preflight against what a GPU cluster will do: each stage's workers against the node types,
the GPU probes (on a node that advertises GPUs it does not have: Ray schedules there, torch sees
no CUDA), a GPU node that never comes, and `--address` running every check on that cluster."""

import re
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from conftest import ROOT
from lmplatform.pipeline import preflight
from lmplatform.pipeline.preflight import NodeType, Workers
from raycli import cli_env, start_head, start_node, stop

GCS, DASHBOARD = 6431, 8298
MARKER = "lmplatform_preflight_head"  # a resource only the test cluster's head advertises

GPU_TYPES = [
    NodeType("head", {"CPU": 8, "GPU": 0}, 1),
    NodeType("gpu.8x", {"CPU": 96, "GPU": 8}, 2, launched=True),
    NodeType("gpu.1x", {"CPU": 8, "GPU": 1}, 10, launched=True),
]


def test_fit_names_the_stage_the_worker_and_the_node_types():
    as_shipped = Workers("pretraining bert-base", 16, {"CPU": 8, "GPU": 1}, bf16=True)
    assert preflight.fit_problems([as_shipped], GPU_TYPES) == []  # 2 x 8 on gpu.8x

    (many,) = preflight.fit_problems(
        [Workers("pretraining big", 32, {"CPU": 8, "GPU": 1})], GPU_TYPES
    )
    assert many.check == "fit" and many.message.startswith("pretraining big: 32 workers")
    assert "at most 26 (8 per gpu.8x node x 2, 1 per gpu.1x node x 10)" in many.message
    assert "gpu.1x {CPU 8, GPU 1} x max_workers 10" in many.message
    assert "scaling.num_workers=26" in many.fix

    (wide,) = preflight.fit_problems(
        [Workers("fine-tuning sst2", 1, {"CPU": 128, "GPU": 1})], GPU_TYPES
    )
    assert "fine-tuning sst2: one worker of {CPU 128, GPU 1} fits no node" in wide.message
    assert "head {CPU 8, GPU 0}" in wide.message and "scaling.cpus_per_worker" in wide.fix


def _launcher(home, gpu_max_workers: int) -> None:
    """The cluster launcher's config on a head (what `ray up` writes), in a fake home."""
    types = {
        "ray.head.default": {"resources": {"CPU": 2, "GPU": 0}, "max_workers": 0},
        "gpu.1x": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": gpu_max_workers},
    }
    (home / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump({"available_node_types": types}))


def test_no_gpu_node_can_be_added_fails_fast_without_waiting(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _launcher(tmp_path, gpu_max_workers=0)
    start = time.monotonic()
    problems = preflight.run_checks(
        workers=[Workers("pretraining bert-base", 2, {"CPU": 1, "GPU": 1}, bf16=True)],
        gpu_timeout_s=600,
        pretraining=False,
    )
    assert time.monotonic() - start < 120  # the fit check, not the 600 s GPU wait
    (problem,) = problems
    assert problem.check == "fit", problem
    assert problem.message.startswith("pretraining bert-base: one worker of {CPU 1, GPU 1}")
    assert "gpu.1x {CPU 8, GPU 1} x max_workers 0" in problem.message
    assert "scaling.use_gpu=false" in problem.fix


def test_a_gpu_node_that_never_starts_is_named_after_the_timeout(ray_local, tmp_path, monkeypatch):
    """The launcher may add a GPU node (the fit passes) but none comes: no autoscaler here."""
    monkeypatch.setenv("HOME", str(tmp_path))
    _launcher(tmp_path, gpu_max_workers=2)
    workers = [Workers("fine-tuning sst2 (one trial)", 1, {"CPU": 1, "GPU": 1})]
    assert preflight.check_fit(workers) == []
    start = time.monotonic()
    (problem,) = preflight.check_gpu_nodes(workers, timeout_s=3)
    assert time.monotonic() - start < 60
    assert problem.check == "gpus"
    assert "no node with a GPU started within 3 s" in problem.message
    assert "IAM rights to launch instances" in problem.fix and "max_workers" in problem.fix
    assert ray_local.cluster_resources().get("GPU", 0) == 0


@pytest.fixture(scope="module")
def gpu_cluster():
    """A head (1 CPU, and MARKER) and a node that says it has 2 GPUs (it has none), on loopback."""
    head = start_head(
        GCS, DASHBOARD, agent_port=52394, num_cpus=1, extra=[f'--resources={{"{MARKER}": 1}}']
    )
    temp = tempfile.mkdtemp(prefix="pfg", dir="/tmp")
    node = start_node(GCS, 52395, 52396, temp, ["--num-cpus=2", "--num-gpus=2"])
    try:
        deadline = time.time() + 120
        while _driver("print(ray.cluster_resources().get('GPU', 0))").stdout.strip() != "2.0":
            assert time.time() < deadline, "the GPU node did not join"
            time.sleep(2)
        yield f"http://127.0.0.1:{DASHBOARD}"
    finally:
        stop(node)
        stop(head)  # about 30 s: the head winds down its dashboard


def _driver(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a driver joined to the test cluster."""
    return subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(logging_level='ERROR'); {code}"],
        env={**cli_env(), "RAY_ADDRESS": f"127.0.0.1:{GCS}"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_preflight_with_an_address_runs_its_probes_on_that_cluster(gpu_cluster, tmp_path):
    """The laptop case: no RAY_ADDRESS, the dashboard's URL. The checks run on the cluster (its
    head's resource, its fake-GPU node), not in a local Ray of this machine, which has no GPU."""
    r = subprocess.run(
        [
            sys.executable,
            "jobs/preflight.py",
            "--config",
            "jobs/configs/tasks/sentiment-sample.yaml",
            "--address",
            gpu_cluster,
            "scaling.use_gpu=true",
            "scaling.num_workers=2",
            f"output_dir={tmp_path}/runs",
            f"registry={tmp_path}/registry",
        ],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-4000:]
    assert f"running on the cluster at {gpu_cluster} as Ray job" in out, out[-4000:]
    (nodes,) = re.findall(r"preflight: checked on 2 node\(s\) alive: (.*)", out)
    assert f"{MARKER} 1" in nodes, nodes
    gpu = re.search(
        r"preflight: \[gpus\] fine-tuning sentiment-sample \(one trial\): on GPU node (\w{8}), "
        r"torch.cuda.is_available\(\) is False \(torch [^,]+, a CPU-only build",
        out,
    )
    assert gpu, out[-4000:]
    assert re.search(rf"{gpu.group(1)} {{CPU 2, GPU 2\b", nodes), nodes  # the node that has GPUs
    assert "[fit]" not in out  # 2 workers of {CPU 1, GPU 1} fit the GPU node


def test_nccl_probe_pairs_two_gpu_workers_on_one_node(gpu_cluster):
    """The pair's placement and rendezvous work (gloo all-reduces between them); NCCL, which
    this CPU-only torch lacks, is reported with the ranks' node."""
    r = _driver(
        "from lmplatform.pipeline import preflight; "
        "print(repr(preflight.probe_nccl(120, backend='gloo'))); "
        "print(repr(preflight.probe_nccl(120)))"
    )
    assert r.returncode == 0, r.stderr[-4000:]
    out = r.stdout
    gloo, nccl = out.strip().splitlines()[-2:]
    assert gloo == "None", out
    assert re.search(r"rank 0 on node \w{8}: .*NCCL", nccl), nccl


def test_a_token_the_cluster_refuses_is_one_line_with_the_fix(gpu_cluster, tmp_path):
    wrong = tmp_path / "token"
    wrong.write_text("0" * 64)
    r = subprocess.run(
        [
            sys.executable,
            "jobs/preflight.py",
            "--config",
            "jobs/configs/tasks/sentiment-sample.yaml",
        ]
        + ["--address", gpu_cluster],
        cwd=ROOT,
        env={**cli_env(), "RAY_AUTH_TOKEN_PATH": str(wrong)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stdout + r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("preflight: [")]
    assert f"[auth] the cluster at {gpu_cluster} refused this machine's token" in line
    assert "~/.ray/auth_token" in line
