"""A task's model from the registry, for serving: its `best` version loaded into a predictor
(falling back to earlier bests that still load), and the `_Watcher` that polls the registry and
swaps a new `best` in without dropping a request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from lmplatform.registry.adapters import load_task_model
from lmplatform.registry.store import Registry
from lmplatform.serving.predictors import (
    InputError,
    ModelInfo,
    Stopped,
    TaskPredictor,
)


def _task_ref(reg: Registry, task: str, version: str) -> ModelInfo:
    meta = reg.metadata("tasks", task, version)
    evidence = {k: meta.get(k) for k in ("metric", "value", "per_class")}
    return ModelInfo(name=task, version=version, **evidence)


def load_task(
    reg: Registry,
    task: str,
    version: str | None = None,
    compile: str | None = None,
    quantize: str | None = None,
) -> TaskPredictor:
    version = version or reg.best(task)
    if version is None:
        raise ValueError(f"task {task!r} has no promoted best model in {reg.uri}")
    folder, ref = reg.local_path("tasks", task, version), _task_ref(reg, task, version)
    model = load_task_model(reg, folder)  # an adapter version: on its base, merged
    p = TaskPredictor(folder, ref, model, compile=compile, quantize=quantize)
    p.smoke()
    return p


log = logging.getLogger("ray.serve")
T = TypeVar("T")


FALLBACKS = 3  # earlier bests a starting replica tries when the promoted one cannot load


def load_serving(reg: Registry, task: str, load: Callable[[str], T]) -> tuple[T, str | None]:
    """`load(version)` of the task's best, or, when it cannot load (a checksum mismatch, a
    failed smoke test), of the version it replaced (and the one that replaced, up to FALLBACKS
    back) that can, with why the best failed: a replica that starts must serve something, and
    the model promoted before beats none. The chain of replacements, not the whole log: a
    version an operator rolled away from is not on it."""
    best = reg.best(task)
    if best is None:
        raise ValueError(f"task {task!r} has no promoted best model in {reg.uri}")
    try:
        return load(best), None
    except Exception as e:
        error = f"{task}@{best} could not be loaded: {type(e).__name__}: {e}"
    for version in _replaced_chain(reg, task, best)[:FALLBACKS]:
        try:
            loaded = load(version)
        except Exception as e:
            log.warning("task %s: %s cannot be loaded either: %s", task, version, e)
            continue
        log.warning("%s; serving the previous best %s", error, version)
        return loaded, error
    raise RuntimeError(f"{error}; no earlier best loads either")


def _replaced_chain(reg: Registry, task: str, best: str) -> list[str]:
    """The versions `best` replaced, newest first, from the promotion log's `previous`."""
    log_ = reg.promotions(task)
    chain, seen = [], {best}
    current = log_[-1] if log_ else None
    while current is not None:
        version = (current.get("previous") or {}).get("version")
        if not isinstance(version, str) or version in seen:
            break
        chain.append(version)
        seen.add(version)
        current = next((r for r in reversed(log_) if r.get("version") == version), None)
    return chain


def _error(e: Exception) -> dict:
    status = 422 if isinstance(e, InputError) else 404
    return {"error": {"status": status, "message": str(e)}}


def _timed_out(e: Stopped) -> dict:
    return {"error": {"status": 504, "type": "timeout", "message": str(e)}}


MAX_BACKOFF_S = 300.0


class _Watcher:
    """Polls the registry for new `best` versions of some tasks and calls `swap` with them.
    A swap that fails (the new best cannot load) keeps the loaded versions and is tried again
    only after a backoff that doubles per failure (up to MAX_BACKOFF_S), not every poll with a
    full download; `error` says what failed until a swap succeeds."""

    def __init__(self, reg: Registry, tasks: list[str], refresh_s: float, swap, metrics=None):
        self.reg, self.tasks, self.refresh_s, self.swap = reg, tasks, refresh_s, swap
        self.metrics = metrics
        self._kick = threading.Event()
        self._failed: dict[tuple, tuple[int, float]] = {}  # wanted -> (failures, retry at)
        self.failures = 0  # swaps that failed, in all
        self.error: str | None = None
        if refresh_s > 0:
            threading.Thread(target=self._run, daemon=True, name="registry-watch").start()

    def check_now(self) -> None:
        self._kick.set()

    def _run(self) -> None:
        while True:
            self._kick.wait(self.refresh_s)
            self._kick.clear()
            self.check()

    def failed(self, wanted: dict[str, str | None], e: Exception) -> None:
        """Note a swap to `wanted` that failed (also at start): no new try before the backoff."""
        key = tuple(sorted(wanted.items()))
        failures = self._failed.get(key, (0, 0.0))[0] + 1
        self.failures += 1
        wait = min(max(self.refresh_s, 1.0) * 2**failures, MAX_BACKOFF_S)
        self._failed = {key: (failures, time.monotonic() + wait)}
        self.error = f"{_describe(wanted)} could not be loaded: {type(e).__name__}: {e}"
        log.warning("%s; serving the loaded version, next try in %.0f s", self.error, wait)
        if self.metrics is not None:
            for t, v in wanted.items():
                self.metrics.load_failed(t, v or "none")

    def check(self, force: bool = False) -> None:
        """Swap to the tasks' current bests unless that failed recently (`force`: try now)."""
        try:
            wanted = {t: self.reg.best(t) for t in self.tasks}
        except Exception as e:  # the registry is unreachable: keep serving, report on health
            self.error = f"registry check failed: {type(e).__name__}: {e}"
            log.warning("%s", self.error)
            return
        retry_at = self._failed.get(tuple(sorted(wanted.items())), (0, 0.0))[1]
        if not force and time.monotonic() < retry_at:
            return
        try:
            self.swap(wanted)
        except Exception as e:
            self.failed(wanted, e)
            return
        self._failed, self.error = {}, None


def _describe(versions: dict[str, str | None]) -> str:
    return ", ".join(f"{t}@{v}" for t, v in versions.items())
