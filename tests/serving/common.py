"""What the serving tests share besides their fixtures (tests/serving/conftest.py): the app
name, requests to it, a deployment's stats."""

from __future__ import annotations

import json

import requests

APP = "lm"
GUARD_KEY = "guard-key-0123456789abcdef"


def _post(served, path, body, **kw):
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    kw.setdefault("headers", {"Content-Type": "application/json"})
    return requests.post(served["url"] + path, data=data, timeout=30, **kw)


def _stats(deployment: str) -> dict:
    """A deployment's stats; a task's own deployment lives in its own application."""
    from ray import serve

    app = f"{APP}-{deployment[len('task-') :]}" if deployment.startswith("task-") else APP
    return serve.get_deployment_handle(deployment, app_name=app).stats.remote().result()


def _guarded(guarded, method, path, body=None, key=GUARD_KEY, **kw):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body)
    return requests.request(
        method, guarded["url"] + path, data=data, headers=headers, timeout=30, **kw
    )
