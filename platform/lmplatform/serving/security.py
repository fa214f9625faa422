"""Who may call the HTTP API and how: API keys, JSON-only POSTs, CORS, and how much at once
(`Admission`: a bound on requests in progress and a per-request timeout).

- **API keys** (optional): `Authorization: Bearer <key>` on every route but `/healthz` (load
  balancers probe it without credentials). Keys come from a file (one per line, `#` comments;
  re-read when it changes, so keys rotate without a redeploy: add the new key, move clients,
  remove the old one) and/or an environment variable (comma- or newline-separated: a mounted
  secret). Every candidate is compared in constant time (`hmac.compare_digest` over SHA-256
  digests, all keys checked), so the response time does not reveal how much of a key matched.
  A missing or wrong key is 401 `unauthorized` in the error envelope, with `WWW-Authenticate`.
- **Content-Type**: a POST must say `application/json` (415 `unsupported_media_type`
  otherwise). Browsers send cross-site form posts (`text/plain`, form encodings) without a CORS
  preflight; refusing them keeps a web page from driving a local endpoint.
- **CORS**: off unless `cors_origins` lists the origins allowed to call the API from a browser.

The config (`AuthConfig`) is checked at the edge: a non-loopback `host` without keys is refused
unless `allow_unauthenticated` says a gateway in front authenticates (serving/config.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from pathlib import Path

from pydantic import Field

from lmplatform.config import StrictModel

MIN_KEY_CHARS = 16
OPEN_PATHS = ("/healthz",)


class AuthConfig(StrictModel):
    api_keys_file: str | None = None
    """A file with one API key per line ('#' starts a comment); re-read when it changes."""
    api_keys_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """An environment variable (on the ingress nodes) holding keys, comma- or
    newline-separated."""
    allow_unauthenticated: bool = False
    """Serve a non-loopback host without keys (a gateway in front authenticates)."""

    @property
    def enabled(self) -> bool:
        return self.api_keys_file is not None or self.api_keys_env is not None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The accepted keys (as digests), from the file and the environment; the file is re-read
    when its modification time or size changes."""

    def __init__(self, cfg: AuthConfig):
        self.cfg = cfg
        self._stamp: tuple | None = None
        self._file_keys: list[bytes] = []
        env = os.environ.get(cfg.api_keys_env, "") if cfg.api_keys_env else ""
        if cfg.api_keys_env and not env.strip():
            raise ValueError(f"auth.api_keys_env: ${cfg.api_keys_env} is not set or empty")
        self._env_keys = [_digest(k) for k in _parse(env, f"${cfg.api_keys_env}")]
        self._reload()
        if not self._env_keys and not self._file_keys:
            raise ValueError("auth: no API keys configured")

    def _reload(self) -> None:
        if self.cfg.api_keys_file is None:
            return
        path = Path(self.cfg.api_keys_file)
        try:
            st = path.stat()
        except FileNotFoundError:
            if self._stamp is None:  # at start: refuse; later: keep the keys last read
                raise ValueError(f"auth.api_keys_file: {path} does not exist") from None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            keys = _parse(path.read_text(), str(path))
            if not keys and self._stamp is None and not self._env_keys:
                raise ValueError(f"auth.api_keys_file: {path} holds no keys")
            self._file_keys, self._stamp = [_digest(k) for k in keys], stamp

    def accepts(self, key: str) -> bool:
        self._reload()
        given = _digest(key)
        ok = False
        for k in (*self._file_keys, *self._env_keys):  # every key, whatever matched
            ok |= hmac.compare_digest(given, k)
        return ok


def _parse(text: str, where: str) -> list[str]:
    keys = []
    for line in text.replace(",", "\n").splitlines():
        k = line.split("#", 1)[0].strip()
        if not k:
            continue
        if len(k) < MIN_KEY_CHARS:
            raise ValueError(
                f"{where}: an API key has {len(k)} characters (at least {MIN_KEY_CHARS})"
            )
        keys.append(k)
    return keys


class Guard:
    """ASGI middleware: API keys (when configured) and JSON-only POSTs, before anything reads
    the body."""

    def __init__(self, app, keys: KeyRing | None, error_response):
        self.app, self.keys, self.error = app, keys, error_response

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.keys is not None and not scope["path"].endswith(OPEN_PATHS):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, key = auth.partition(" ")
            if scheme.lower() != "bearer" or not self.keys.accepts(key.strip()):
                msg = (
                    "missing API key: send 'Authorization: Bearer <key>'"
                    if not auth
                    else "invalid API key"
                )
                resp = self.error(401, "unauthorized", msg)
                resp.headers["WWW-Authenticate"] = "Bearer"
                return await resp(scope, receive, send)
        if scope["method"] == "POST":
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            if ctype.split(";", 1)[0].strip().lower() != "application/json":
                said = f"Content-Type {ctype!r}" if ctype else "no Content-Type"
                resp = self.error(415, "unsupported_media_type", f"{said}: send 'application/json'")
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


class Admission:
    """ASGI middleware on POSTs: at most `max_pending` in progress (more get an immediate 503
    `overloaded` with Retry-After: shedding load beats queueing it into every client's
    latency), and each answered within `timeout_s` (504 `timeout` otherwise; the work is
    cancelled)."""

    def __init__(self, app, max_pending: int, timeout_s: float, retry_after_s: int, error_response):
        self.app, self.max_pending, self.timeout_s = app, max_pending, timeout_s
        self.retry_after_s, self.error = retry_after_s, error_response
        self.pending = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.pending >= self.max_pending:
            resp = self.error(
                503,
                "overloaded",
                f"{self.pending} requests in progress (at most {self.max_pending}): retry "
                f"after {self.retry_after_s} s",
            )
            resp.headers["Retry-After"] = str(self.retry_after_s)
            return await resp(scope, receive, send)
        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.pending += 1
        try:
            await asyncio.wait_for(self.app(scope, receive, tracked_send), self.timeout_s)
        except TimeoutError:
            if not started:
                resp = self.error(
                    504, "timeout", f"no answer within {self.timeout_s:g} s (request_timeout_s)"
                )
                await resp(scope, receive, send)
        finally:
            self.pending -= 1
