"""Who may call the HTTP API: API keys (file and environment, rotation), JSON-only POSTs, CORS,
the non-loopback host rule, and inputs that used to be 500s. Real HTTP on 127.0.0.1 over
in-process predictors (the same app the Serve ingress builds)."""

from __future__ import annotations

import json
import time

import pytest
import requests

from serving_fixtures import _tokenizers, local_server, publish_task

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory, sample_dir):
    """A random-weight sentiment task served in-process."""
    import torch

    from lmplatform.models.bert.model import BertConfig
    from lmplatform.models.tasks import build_encoder
    from lmplatform.registry.store import Registry
    from lmplatform.serving.loading import load_task

    root = tmp_path_factory.mktemp("sec")
    wp, _ = _tokenizers(root, sample_dir)
    reg = Registry(root / "registry")
    torch.manual_seed(0)
    enc = build_encoder(BertConfig(size="debug", vocab_size=2000, max_seq_len=64))
    publish_task(reg, root, "sentiment", enc, "classification", ["negative", "positive"], wp)
    return {"sentiment": load_task(reg, "sentiment")}


def _post(url, body, key=None, **headers):
    headers.setdefault("Content-Type", "application/json")
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{url}/v1/predict/sentiment", data=data, headers=headers, timeout=10)


def test_api_keys_from_a_file_rotate_without_a_restart(sentiment, tmp_path, monkeypatch):
    from lmplatform.serving.security import AuthConfig

    keys = tmp_path / "keys.txt"
    keys.write_text(f"# clients of team a\n{KEY_A}\n")
    monkeypatch.setenv("LMP_TEST_KEYS", f"{KEY_B}-env")
    auth = AuthConfig(api_keys_file=str(keys), api_keys_env="LMP_TEST_KEYS")
    with local_server(sentiment, auth=auth) as url:
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # probes: open
        for key, headers in [(None, {}), ("wrong-key-0123456789", {}), (KEY_A[:-1], {})]:
            r = _post(url, {"inputs": ["a fine film"]}, key, **headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["type"] == "unauthorized"
            assert r.headers["WWW-Authenticate"] == "Bearer"
        r = requests.get(f"{url}/v1/tasks", headers={"Authorization": "Basic eDp5"}, timeout=10)
        assert r.status_code == 401 and "invalid API key" in r.json()["error"]["message"]
        assert (
            _post(url, {"inputs": ["a fine film"]})
            .json()["error"]["message"]
            .startswith("missing API key")
        )
        assert _post(url, {"inputs": ["a fine film"]}, KEY_A).status_code == 200
        assert _post(url, {"inputs": ["a fine film"]}, f"{KEY_B}-env").status_code == 200
        # rotation: the new key is added, clients move, the old one is removed — no restart
        keys.write_text(f"{KEY_A}\n{KEY_B}\n")
        assert _post(url, {"inputs": ["ok"]}, KEY_B).status_code == 200
        time.sleep(0.01)  # a distinct modification time even on coarse clocks
        keys.write_text(f"{KEY_B}  # team a moved\n")
        assert _post(url, {"inputs": ["ok"]}, KEY_A).status_code == 401
        assert _post(url, {"inputs": ["ok"]}, KEY_B).status_code == 200
        # a key check comes before the body is read: no key, no 413 / 422 leak
        assert _post(url, b"x" * 200_000).status_code == 401


def test_auth_config_errors_name_the_problem(tmp_path, monkeypatch):
    from lmplatform.serving.config import ServeConfig
    from lmplatform.serving.security import AuthConfig, KeyRing

    with pytest.raises(ValueError, match="host=0.0.0.0 serves the API beyond this machine"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", auth={"allow_unauthenticated": True}).host == "0.0.0.0"
    assert ServeConfig(host="10.0.0.5", auth={"api_keys_env": "LMP_KEYS"}).auth.enabled
    with pytest.raises(ValueError, match="does not exist"):
        KeyRing(AuthConfig(api_keys_file=str(tmp_path / "missing.txt")))
    (tmp_path / "short.txt").write_text("abc\n")
    with pytest.raises(ValueError, match="an API key has 3 characters"):
        KeyRing(AuthConfig(api_keys_file=str(tmp_path / "short.txt")))
    monkeypatch.delenv("LMP_UNSET", raising=False)
    with pytest.raises(ValueError, match=r"\$LMP_UNSET is not set"):
        KeyRing(AuthConfig(api_keys_env="LMP_UNSET"))


def test_only_json_posts_and_no_input_gives_a_500(sentiment):
    with local_server(sentiment) as url:
        for ctype in ("", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            r = _post(url, {"inputs": ["ok"]}, **{"Content-Type": ctype})
            assert r.status_code == 415, (ctype, r.text)
            assert r.json()["error"]["type"] == "unsupported_media_type"
        assert (
            _post(
                url, {"inputs": ["ok"]}, **{"Content-Type": "Application/JSON; charset=utf-8"}
            ).status_code
            == 200
        )
        # an integer beyond Python's 4,300-digit limit: 400, not a 500
        r = _post(url, b'{"inputs": ["ok"], "num_beams": ' + b"9" * 5000 + b"}")
        assert r.status_code == 400 and "number too large" in r.json()["error"]["message"]
        # no CORS unless configured: a browser gets no Access-Control-Allow-Origin
        r = requests.options(
            f"{url}/v1/predict/sentiment",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            timeout=10,
        )
        assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(sentiment):
    with local_server(sentiment, cors_origins=["https://app.example"]) as url:
        pre = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        ok = requests.options(
            f"{url}/v1/predict/sentiment",
            headers={"Origin": "https://app.example", **pre},
            timeout=10,
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        bad = requests.options(
            f"{url}/v1/predict/sentiment",
            headers={"Origin": "https://evil.example", **pre},
            timeout=10,
        )
        assert "access-control-allow-origin" not in bad.headers


def test_generation_temperature_is_zero_or_at_least_a_thousandth():
    from pydantic import ValidationError

    from lmplatform.serving.api import GenerateRequest

    for t in (0, 0.0, 1e-3, 0.7, 10):
        assert GenerateRequest(inputs=["x"], temperature=t).temperature == t
    for t in (1e-40, 5e-324, 9.9e-4):
        with pytest.raises(ValidationError, match="must be 0 \\(greedy\\) or at least 0.001"):
            GenerateRequest(inputs=["x"], temperature=t)


def _health(url) -> dict:
    return requests.get(f"{url}/healthz", timeout=10).json()


def test_a_bad_key_file_keeps_the_keys_read_before_and_a_deleted_one_revokes(sentiment, tmp_path):
    """Half-written, too short, not UTF-8 or empty: the keys read before stay in use (no 500),
    /healthz says degraded without details; a rename-over with the same size and time is
    seen (inode); deleting the file revokes its keys."""
    import os

    from lmplatform.serving.security import AuthConfig

    keys = tmp_path / "keys.txt"
    keys.write_text(KEY_A + "\n")
    with local_server(sentiment, auth=AuthConfig(api_keys_file=str(keys))) as url:
        assert _post(url, {"inputs": ["ok"]}, KEY_A).status_code == 200
        assert _health(url) == {"status": "ok", "problems": []}
        for bad in (b"key-a-01", b"\xff\xfe" + KEY_B.encode(), b"", b"# nothing yet\n"):
            keys.write_bytes(bad)
            r = _post(url, {"inputs": ["ok"]}, KEY_A)
            assert r.status_code == 200, (bad, r.status_code, r.text)
            assert _post(url, {"inputs": ["ok"]}, KEY_B).status_code == 401
            h = _health(url)
            assert h["status"] == "degraded" and "API key file" in h["problems"][0], h
            assert str(keys) not in json.dumps(h)
        # a new file renamed over the old one, same size and modification time: a new inode
        keys.write_text(KEY_A + "\n")
        st = keys.stat()
        _post(url, {"inputs": ["ok"]}, KEY_A)  # read it
        new = tmp_path / "keys.new"
        new.write_text(KEY_B + "\n")
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(new, keys)
        assert _post(url, {"inputs": ["ok"]}, KEY_B).status_code == 200
        assert _post(url, {"inputs": ["ok"]}, KEY_A).status_code == 401
        assert _health(url)["status"] == "ok"
        keys.unlink()
        assert _post(url, {"inputs": ["ok"]}, KEY_B).status_code == 401
        assert _health(url)["status"] == "degraded"


def test_only_get_and_head_of_healthz_itself_skip_the_key(sentiment, monkeypatch):
    """Before: any path ending in /healthz, any method, went without a key."""
    from lmplatform.serving.security import AuthConfig, is_open

    monkeypatch.setenv("LMP_TEST_ONLY_KEY", KEY_A)
    with local_server(sentiment, auth=AuthConfig(api_keys_env="LMP_TEST_ONLY_KEY")) as url:
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        for method, path in [
            ("POST", "/healthz"),
            ("POST", "/v1/predict/healthz"),
            ("GET", "/v1/predict/sentiment/healthz"),
            ("PUT", "/healthz"),
        ]:
            r = requests.request(method, url + path, json={"inputs": ["x"]}, timeout=10)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert "sentiment" not in r.text
    scope = {"type": "http", "method": "HEAD", "path": "/api/healthz", "root_path": "/api"}
    assert is_open(scope) and not is_open({**scope, "path": "/api/x/healthz"})


def test_a_request_whose_replica_dies_is_sent_once_more_then_refused():
    """A replica that dies holding a request may have been killed by it (out of memory): one
    more replica may try, not every one in turn; an unreachable replica is retried."""
    import asyncio

    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from lmplatform.serving.api import ApiError
    from lmplatform.serving.ingress import _call

    def attempts(errors):
        calls = []

        async def request():
            calls.append(1)
            if len(calls) <= len(errors):
                raise errors[len(calls) - 1]
            return {"ok": True}

        try:
            return asyncio.run(_call(request, "sentiment")), len(calls)
        except ApiError as e:
            return e, len(calls)

    assert attempts([ActorDiedError()]) == ({"ok": True}, 2)
    err, n = attempts([ActorDiedError(), ActorDiedError()])
    assert n == 2 and err.status == 503 and "not sent again" in err.message
    crash = ActorDiedError()  # Ray lists the OOM killer among the causes of any death
    crash.error_msg = (
        "The actor died unexpectedly before finishing this task. Worker exit type: "
        "SYSTEM_ERROR. Potential root causes: (1) the process was killed by the OOM killer "
        "due to high memory usage. (2) ray stop --force is called."
    )
    assert attempts([crash]) == ({"ok": True}, 2)
    oom = ActorDiedError()
    oom.error_msg = (
        "Task was killed due to the node running low on memory. Memory on the node was "
        "15.2GB / 16GB (0.95), killed by the memory monitor."
    )
    err, n = attempts([oom])
    assert n == 1 and "out of memory" in err.message
    assert attempts([ActorUnavailableError("x", b"0" * 16)] * 3) == ({"ok": True}, 4)


def test_generation_stops_between_steps_once_its_requests_are_done_with():
    """What a 504 or a cancelled request does to its generation: the next step is not run."""
    import threading

    from lmplatform.serving.deployments import _Deadline
    from lmplatform.serving.predictors import GeneratePredictor, Stopped

    ran = []

    def steps():
        for i in range(1000):
            ran.append(i)
            yield i

    p = GeneratePredictor.__new__(GeneratePredictor)  # only the step loop, no model
    p._lock, p.steps = threading.Lock(), 0
    end = _Deadline(timeout_s=60)
    taken = []
    with pytest.raises(Stopped):
        for x in p._stepped(steps(), end.passed):
            taken.append(x)
            if x == 4:
                end.cancelled.set()
    assert taken == [0, 1, 2, 3, 4] and len(ran) == 5 and p.steps == 5
    late = _Deadline(timeout_s=0.0)
    time.sleep(0.01)
    with pytest.raises(Stopped):
        next(p._stepped(steps(), late.passed))
