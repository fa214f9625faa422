"""Cluster autoscaling on Ray's fake multi-node provider: a GPU-per-replica deployment makes the
autoscaler launch (fake) GPU worker nodes; once the deployment is gone they are removed.

The head has no GPU; the worker type has `GPU: 1`, `min_workers: 0`. Ray 2.60's wheel lacks the
`fake_multi_node/example.yaml` that `AutoscalingCluster` reads, so the provider config is
written here and the head is started with `--autoscaling-config` and `RAY_FAKE_CLUSTER=1`, in
its own process group so that stopping it stops the nodes it launched (and nothing else).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from conftest import ROOT
from serving_fixtures import build_registry

BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD = 6420, 8276

CLUSTER = {
    "cluster_name": "fake-serve",
    "max_workers": 2,
    "provider": {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
        "gcs_address": f"127.0.0.1:{GCS_PORT}",  # the provider assumes 6379 otherwise
    },
    "available_node_types": {
        "ray.head.default": {
            "resources": {"CPU": 2, "GPU": 0},
            "node_config": {},
            "max_workers": 0,
        },
        "ray.worker.gpu": {
            "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 200_000_000},
            "node_config": {},
            "min_workers": 0,
            "max_workers": 2,
        },
    },
    "head_node_type": "ray.head.default",
    "auth": {},
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "docker": {},
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
}

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import ray
    from ray import serve
    from lmplatform.serving.config import ServeConfig
    from lmplatform.serving.graph import delete, deploy

    registry, port = sys.argv[1], int(sys.argv[2])
    ray.init(address="auto", logging_level="ERROR")

    def gpu_nodes():
        return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)

    print(json.dumps({"event": "start", "gpu_nodes": gpu_nodes()}), flush=True)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    cfg = ServeConfig(registry=registry, tasks=["sentiment"], replica_cpus=0, replica_gpus=1,
                      autoscaling={"min_replicas": 2, "max_replicas": 2}, app_name="gpu")
    t0 = time.time()
    deploy(cfg)
    print(json.dumps({"event": "running", "gpu_nodes": gpu_nodes(), "s": time.time() - t0}), flush=True)
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict/sentiment",
                                 data=b'{"inputs": ["on a gpu node"]}', method="POST",
                                 headers={"Content-Type": "application/json"})
    print(json.dumps({"event": "answer", "status": urllib.request.urlopen(req, timeout=30).status}), flush=True)
    delete(cfg)
    t1 = time.time()
    while time.time() - t1 < 120 and gpu_nodes() > 0:
        time.sleep(1)
    print(json.dumps({"event": "idle", "gpu_nodes": gpu_nodes(), "s": time.time() - t1}), flush=True)
    serve.shutdown()
    """
)


def test_gpu_replicas_launch_fake_gpu_nodes_which_go_away_when_idle(tmp_path, sample_dir):
    registry = build_registry(tmp_path, sample_dir)
    config = tmp_path / "fake-cluster.yaml"
    config.write_text(json.dumps(CLUSTER))
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(ROOT / "platform"),
    }
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--autoscaling-config={config}",
            f"--port={GCS_PORT}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={DASHBOARD}",
            "--ray-client-server-port=6421",
            "--dashboard-agent-listen-port=52368",  # the session's own Ray has the default
            "--num-cpus=2",
            "--num-gpus=0",
            f"--temp-dir={tempfile.mkdtemp(prefix='rf', dir='/tmp')}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port = 18000 + os.getpid() % 1000
        driver = subprocess.run(
            [sys.executable, "-c", DRIVER, str(registry), str(port)],
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{GCS_PORT}"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        events = {}
        for line in driver.stdout.splitlines():
            if line.startswith("{"):
                e = json.loads(line)
                events[e["event"]] = e
        assert driver.returncode == 0, driver.stdout[-2000:] + driver.stderr[-3000:]
        print(events)
        assert events["start"]["gpu_nodes"] == 0  # the head has no GPU; no worker yet
        assert events["running"]["gpu_nodes"] == 2  # two GPU replicas -> two GPU nodes launched
        assert events["answer"]["status"] == 200
        assert events["idle"]["gpu_nodes"] == 0  # removed once idle
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops everything it started
        head.wait(timeout=60)
