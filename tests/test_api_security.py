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

    from lmplatform.models.bert import BertConfig
    from lmplatform.models.tasks import build_encoder
    from lmplatform.registry import Registry
    from lmplatform.serving.deployments import load_task

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
