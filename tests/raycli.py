"""Ray's own CLI for the tests that need real processes: a head (and extra nodes) on 127.0.0.1
with their own ports and temp dirs, `ray job submit`, and waiting for an HTTP endpoint."""

from __future__ import annotations

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

BIN = Path(sys.executable).parent


def cli_env() -> dict:
    """This environment's `ray`/`python` first; a local Ray stays on loopback; the session's
    Ray token (conftest) comes with os.environ."""
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",  # the job's `python` is this environment's
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    return env


def wait_http(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered (401 without the token): up
        except Exception:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds}s")


def start_head(
    port: int, dashboard: int, agent_port: int, num_cpus: int = 2, extra: list[str] = ()
) -> subprocess.Popen:
    """`ray start --head --block` on 127.0.0.1 with its own ports; returns once the dashboard
    answers. Stop it with `stop(proc)`: --block makes the head stop everything it started."""
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={port + 1}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--num-cpus={num_cpus}",
            f"--temp-dir={tempfile.mkdtemp(prefix='rh', dir='/tmp')}",  # short: socket paths
            *extra,
        ],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{dashboard}/api/version", 120)
    except BaseException:
        stop(proc)
        raise
    return proc


def start_node(
    gcs_port: int, agent_port: int, metrics_port: int, temp: str, extra: list[str] = ()
) -> subprocess.Popen:
    """A node joining the head at 127.0.0.1:`gcs_port` (`ray start --block`, loopback only, its
    own ports and temp dir); the caller waits for it to join. Stop it with `stop(proc)`."""
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "scripts" / "ray_start_loopback.py"),
            "--block",
            f"--address=127.0.0.1:{gcs_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--metrics-export-port={metrics_port}",
            f"--temp-dir={temp}",
            *extra,
        ],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def job_submit(dashboard: int, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`ray job submit` of the project (working dir and runtime_env as the README says), with
    the session's token (the head asks for it)."""
    return subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--working-dir",
            ".",
            "--runtime-env",
            "jobs/runtime_env.yaml",
            "--",
            "python",
            *args,
        ],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_all_skipped(log: str, stages: list[str]) -> None:
    """A resubmitted pipeline said `skipped` for every stage (nothing ran twice)."""
    import re

    for stage in stages:
        assert re.search(rf"\[pipeline\] {re.escape(stage)}: skipped", log), (stage, log[-3000:])
