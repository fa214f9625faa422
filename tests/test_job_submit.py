"""`ray job submit` against a local head (token authentication on) runs bert-debug to the registry."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import ROOT
from lmplatform.registry import Registry

BIN = Path(sys.executable).parent
DASHBOARD = 8275


def _wait_http(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered (401 without the token): the dashboard is up
        except Exception:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds}s")


def test_ray_job_submit_pretrains_and_registers(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",  # the job's `python` is this environment's
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--port=6390",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={DASHBOARD}",
            "--ray-client-server-port=6391",
            "--dashboard-agent-listen-port=52366",
            "--num-cpus=2",
            f"--temp-dir={tempfile.mkdtemp(prefix='rj', dir='/tmp')}",
        ],  # short: socket paths are limited
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{DASHBOARD}/api/version", 120)
        out = tmp_path / "out"
        submit = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{DASHBOARD}",
                "--working-dir",
                ".",
                "--runtime-env",
                "jobs/runtime_env.yaml",
                "--",
                "python",
                "jobs/pretrain.py",
                "--config",
                "jobs/configs/pretrain/bert-debug.yaml",
                f"output_dir={out}",
                f"registry={out}/registry",
                "train.max_steps=6",
                "train.checkpoint_every=6",
            ],
            cwd=ROOT,
            env={**env, "RAY_AUTH_MODE": "token"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout + submit.stderr
        assert "step 6/6" in submit.stdout  # the progress line reaches the submitter
        reg = Registry(out / "registry")
        assert reg.versions("pretrained", "bert-debug") == ["v0001"]
        assert reg.metadata("pretrained", "bert-debug", "v0001")["lineage"]["steps"] == 6
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops everything it started
        head.wait(timeout=60)
