"""Ray token authentication on a machine that never ran the project: the token is created where
Ray looks for one, private to the user, reused afterwards, and a job joining a cluster through
RAY_ADDRESS asks with it."""

import json
import os
import stat
import subprocess
import sys

import pytest

from lmplatform import runtime


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    return home


def _ensure_token(env: dict) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "lmplatform.runtime", "ensure-token"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_ensure_token_creates_a_private_token_in_an_empty_home_once(empty_home):
    token = empty_home / ".ray" / "auth_token"
    assert runtime.token_location() is None
    first = _ensure_token(dict(os.environ))
    assert first == f"Ray token authentication: created the token in {token}"
    value = token.read_text()
    assert len(value) == 64 and int(value, 16) >= 0  # 256 bits, as Ray's own generator
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert (
        _ensure_token(dict(os.environ)) == f"Ray token authentication: using the token in {token}"
    )
    assert token.read_text() == value
    assert runtime.token_location() == str(token)


def test_a_token_named_by_the_environment_wins(empty_home, tmp_path, monkeypatch):
    named = tmp_path / "cluster-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert runtime.token_location() is None  # Ray fails on a named file that is missing
    where, created = runtime.ensure_token()
    assert (where, created) == (str(named), True)
    assert not (empty_home / ".ray").exists()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert runtime.token_location() == "the RAY_AUTH_TOKEN variable"


def test_joining_through_ray_address_asks_with_a_token_only_when_there_is_one(empty_home):
    runtime.use_token_auth(starting_local=False)
    assert "RAY_AUTH_MODE" not in os.environ  # no token: Ray's own error would name the cause
    runtime.ensure_token()
    runtime.use_token_auth(starting_local=False)
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_an_explicit_mode_is_kept(empty_home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    runtime.use_token_auth(starting_local=True)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert runtime.token_location() is None  # nothing created for a user who opted out


LOCAL_RAY = """
import json, urllib.error, urllib.request
from lmplatform.runtime import init_ray
ray = init_ray(num_cpus=1, quiet=True)
url = ray._private.worker.global_worker.node.address_info["webui_url"]
token = open(__import__("os").path.expanduser("~/.ray/auth_token")).read().strip()
codes = {}
for name, headers in (("without", {}), ("with", {"Authorization": f"Bearer {token}"})):
    req = urllib.request.Request(f"http://{url}/api/version", headers=headers)
    try:
        codes[name] = urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as e:
        codes[name] = e.code
print(json.dumps({"codes": codes, "on_loopback": url.startswith("127.0.0.1:")}))
ray.shutdown()
"""


def test_a_job_on_a_machine_that_never_ran_ray_starts_it_with_token_auth(tmp_path):
    """What `python jobs/<job>.py` does with no Ray running and an empty home: a local Ray with
    token authentication, its token made first (0600); the dashboard refuses a caller without
    it. Nothing from the test session's own token or Ray is inherited; an empty RAY_ADDRESS
    (once a ValueError from ray.init) means no cluster."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_AUTH", "RAY_ADDRESS")) and k != "LMPLATFORM_VERBOSE"
    }
    env["HOME"] = str(home)
    env["RAY_ADDRESS"] = ""  # `RAY_ADDRESS= python jobs/…`: unset, not an address to parse
    out = subprocess.run(
        [sys.executable, "-c", LOCAL_RAY], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"codes": {"without": 401, "with": 200}, "on_loopback": True}, result
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_worker_settings_leave_out_what_the_submitted_job_sets(monkeypatch):
    """Ray refuses a runtime_env variable set both by `ray job submit` and by ray.init."""
    from lmplatform import console

    monkeypatch.delenv("LMPLATFORM_VERBOSE", raising=False)
    job = {"runtime_env": {"env_vars": {"PYTHONPATH": "platform", "RAY_DEDUP_LOGS": "1"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    ours = console.worker_env_vars()
    assert "RAY_DEDUP_LOGS" not in ours and "PYTHONPATH" not in ours
    assert ours["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"  # every line once, quiet or verbose
    monkeypatch.setenv("LMPLATFORM_VERBOSE", "1")
    loud = console.worker_env_vars()
    assert loud["LMPLATFORM_VERBOSE"] == "1" and "RAY_TQDM" not in loud
