"""Who may call the HTTP API and how: API keys, JSON-only POSTs, CORS, and how much at once
(`Admission`: a bound on requests in progress and a per-request timeout).

- **API keys** (optional): `Authorization: Bearer <key>` on every route but `GET /healthz` (load
  balancers probe it without credentials; only GET/HEAD of exactly that path). Keys come from a file (one per line, `#` comments;
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
unless `allow_unauthenticated` says a gateway in front authenticates (serving/config.py), and so
is an application built on a Serve whose proxies really bind beyond loopback
(`http_options.host` of `serve deploy`; serving/graph.py `build`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
from pathlib import Path

from pydantic import Field

from lmplatform.config import StrictModel

MIN_KEY_CHARS = 16
OPEN_PATH = "/healthz"
"""The one route answered without a key, to GET and HEAD only: load balancers' probe."""

log = logging.getLogger("ray.serve")


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_problem(host: str, auth: AuthConfig, where: str = "host") -> str | None:
    """Why serving on `host` with `auth` would open the API to the network (None if it does
    not): a bind beyond loopback needs keys, or `allow_unauthenticated` for a gateway."""
    if is_loopback(host) or auth.enabled or auth.allow_unauthenticated:
        return None
    return (
        f"{where}={host} serves the API beyond this machine with no authentication: set "
        "auth.api_keys_file or auth.api_keys_env, or auth.allow_unauthenticated: true if a "
        "gateway in front authenticates"
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The accepted keys (as digests), from the file and the environment. The file is re-read
    when it changes (device, inode, modification time or size: an editor's rename-over shows
    as a new inode). A file that turns bad while serving (half-written, a short key, not UTF-8,
    empty) keeps the keys read before and sets `problem`: one bad write must not turn every
    answer into an error. A deleted file revokes its keys."""

    def __init__(self, cfg: AuthConfig):
        self.cfg = cfg
        self._stamp: tuple | None = None
        self._file_keys: list[bytes] = []
        self.problem: str | None = None  # the details, for the log
        self.public_problem: str | None = None  # what /healthz may say
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
            if self._stamp is None:  # at start: refuse
                raise ValueError(f"auth.api_keys_file: {path} does not exist") from None
            if self._stamp != "removed":
                self._file_keys, self._stamp = [], "removed"
                self._report(f"{path} was removed: its keys are revoked", "removed")
            return
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            keys = self._read(path, st.st_size)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            if self._stamp is None:
                raise ValueError(f"auth.api_keys_file: {_reason(e, path)}") from None
            self._stamp = stamp  # read again only once it changes again
            self._report(
                f"{_reason(e, path)}: keeping the {len(self._file_keys)} key(s) read before "
                "(delete the file to revoke them)",
                "unreadable",
            )
            return
        self._file_keys, self._stamp = [_digest(k) for k in keys], stamp
        if self.problem:
            log.warning("auth.api_keys_file: %s is readable again (%d keys)", path, len(keys))
        self.problem = self.public_problem = None

    def _read(self, path: Path, size: int) -> list[str]:
        """The file's keys. An empty file is a write in progress (truncate, then write); one
        with only comments revokes its keys when the environment still holds some."""
        if size == 0:
            raise ValueError(f"{path} is empty (being written?)")
        keys = _parse(path.read_bytes().decode("utf-8"), str(path))
        if not keys and not self._env_keys:
            raise ValueError(f"{path} holds no keys")
        return keys

    def _report(self, problem: str, kind: str) -> None:
        self.problem = f"auth.api_keys_file: {problem}"
        self.public_problem = {
            "removed": "auth: the API key file was removed: its keys are revoked",
            "unreadable": "auth: the API key file is unreadable; the keys read before it "
            "changed are in use (see the server log)",
        }[kind]
        log.warning("%s", self.problem)

    def check(self) -> str | None:
        """What is wrong with the key file now, in words for anyone (details in the log)."""
        self._reload()
        return self.public_problem

    def accepts(self, key: str) -> bool:
        self._reload()
        given = _digest(key)
        ok = False
        for k in (*self._file_keys, *self._env_keys):  # every key, whatever matched
            ok |= hmac.compare_digest(given, k)
        return ok


def _reason(e: Exception, path: Path) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"{path} is not UTF-8 (byte {e.start})"
    if isinstance(e, OSError):
        return f"{path} cannot be read ({e.strerror or e})"
    return str(e)


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


def is_open(scope) -> bool:
    """GET or HEAD of exactly /healthz under the app's root path; anything else needs a key
    (a suffix match let `POST /v1/predict/healthz`, or a task named healthz, through)."""
    if scope["method"] not in ("GET", "HEAD"):
        return False
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):  # Starlette keeps the mount's root in the path
        path = path[len(root) :]
    return path == OPEN_PATH


class Guard:
    """ASGI middleware: API keys (when configured) and JSON-only POSTs, before anything reads
    the body."""

    def __init__(self, app, keys: KeyRing | None, error_response):
        self.app, self.keys, self.error = app, keys, error_response

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.keys is not None and not is_open(scope):
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
