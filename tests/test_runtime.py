"""Ray token authentication on a machine that never ran the project: the token is created where
Ray looks for one, private to the user, reused afterwards, and a job joining a cluster through
RAY_ADDRESS asks with it."""

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
