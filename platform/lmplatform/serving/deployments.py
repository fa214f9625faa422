"""Ray Serve deployments over the registry: one per task (or per shared-encoder group), fill-mask,
generate; `build` wires them behind the HTTP ingress (serving/ingress.py).

- Models come from the registry only: a task serves its `best` version.
- Dynamic batching: each request is one element of a `@serve.batch` call; the batch's inputs go
  through the model in one forward (`max_batch_size` requests, `batch_wait_timeout_s`).
  `max_ongoing_requests` is set well above the batch size so that batches can fill.
- Hot swap: every replica polls its task's `best` (`refresh_s`), loads a new version in a
  background thread and switches with one reference assignment; a request is answered wholly by
  one version. `reconfigure` (user_config) forces a check: `jobs/deploy.py --refresh` bumps it.
- Health: `check_health` fails when the model could not be loaded or a smoke prediction fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable

import ray
from ray import serve

from lmplatform.registry.store import Registry
from lmplatform.serving.api import ApiError, Limits, make_app
from lmplatform.serving.config import BATCH_WAIT_S, MAX_BATCH_SIZE, ServeConfig
from lmplatform.serving.ingress import Ingress, raise_error
from lmplatform.serving.predictors import (
    FillMaskPredictor,
    GeneratePredictor,
    InputError,
    ModelInfo,
    SharedEncoder,
    Stopped,
    TaskPredictor,
)
from lmplatform.serving.security import AuthConfig, exposure_problem
from lmplatform.serving.telemetry import ServingMetrics

log = logging.getLogger("ray.serve")


def _task_ref(reg: Registry, task: str, version: str) -> ModelInfo:
    meta = reg.metadata("tasks", task, version)
    evidence = {k: meta.get(k) for k in ("metric", "value", "per_class")}
    return ModelInfo(name=task, version=version, **evidence)


def load_task(
    reg: Registry, task: str, version: str | None = None, compile: str | None = None
) -> TaskPredictor:
    version = version or reg.best(task)
    if version is None:
        raise ValueError(f"task {task!r} has no promoted best model in {reg.uri}")
    p = TaskPredictor(
        reg.local_path("tasks", task, version), _task_ref(reg, task, version), compile=compile
    )
    p.smoke()
    return p


FALLBACKS = 3  # earlier bests a starting replica tries when the promoted one cannot load


def load_serving(
    reg: Registry, task: str, compile: str | None = None
) -> tuple[TaskPredictor, str | None]:
    """The task's best, or, when it cannot load (a checksum mismatch, a failed smoke test), the
    version it replaced (and the one that replaced, up to FALLBACKS back) that can, with why
    the best failed: a replica that starts must serve something, and the model promoted
    before beats none. The chain of replacements, not the whole log: a version an operator
    rolled away from is not on it."""
    best = reg.best(task)
    try:
        return load_task(reg, task, best, compile), None
    except Exception as e:
        if best is None:
            raise
        error = f"{task}@{best} could not be loaded: {type(e).__name__}: {e}"
    for version in _replaced_chain(reg, task, best)[:FALLBACKS]:
        try:
            p = load_task(reg, task, version, compile)
        except Exception as e:
            log.warning("task %s: %s cannot be loaded either: %s", task, version, e)
            continue
        log.warning("%s; serving the previous best %s", error, version)
        return p, error
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


async def _run(long: bool, fn, *args):
    """A model call from a replica's event loop. A short forward (an encoder over a batch)
    runs on the loop itself: in a worker thread it fought the loop for the GIL, and the loop,
    starved, handed the batcher ~3 requests at a time (measured: 174 req/s at 32 clients, mean
    batch 3.3; inline: 262 req/s, mean batch 16). Requests that arrive meanwhile wait in the
    socket and form the next batch. A long one (generation: many forwards) goes to a thread so
    that the loop keeps admitting, shedding (503) and timing out (504) requests."""
    if long:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


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


class _ModelDeployment:
    """What every model deployment shares: the registry it serves from, its metrics, the dynamic
    batch its `_batched` method collects (Serve's decorator takes constants; the serve config's
    sizes are set here), and the answer to one request."""

    def _setup(self, registry: str, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self.reg = Registry(registry)
        self.metrics = ServingMetrics()
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def _pretrained(self, model: str, predictor: type):
        """A pretrained model's predictor, `model` being 'name[@version]' in the registry."""
        name, version = self.reg.resolve("pretrained", model)
        return predictor(
            self.reg.local_path("pretrained", name, version), ModelInfo(name=name, version=version)
        )

    async def _answer(
        self,
        metric: tuple[str, str],
        ref: ModelInfo,
        parse: Callable[[], list],
        batched: Callable[[list], Awaitable],
        task: str | None = None,
    ) -> dict:
        """One request: its inputs parsed (a 4xx body if bad), run in a dynamic batch, counted
        under `metric` (task, version). A batch may answer a request with an error body."""
        t0 = time.perf_counter()
        try:
            items = parse()
        except InputError as e:
            self.metrics.answered(*metric, False, t0)
            return _error(e)
        preds = await batched(items)
        if isinstance(preds, dict):
            return preds
        self.metrics.answered(*metric, True, t0)
        return {
            **({"task": task} if task else {}),
            "model": {"name": ref.name, "version": ref.version},
            "predictions": preds,
        }


class TaskReplica(_ModelDeployment):
    """One task's best model. With one hop it is its own application's ingress and answers
    `POST /v1/predict/<task>` itself (`http`: the HTTP settings of make_app); otherwise the
    ingress calls `predict` through a handle."""

    def __init__(
        self,
        registry: str,
        task: str,
        max_batch_size: int = MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = BATCH_WAIT_S,
        refresh_s: float = 2.0,
        compile: str | None = None,
        http: dict | None = None,
    ):
        self._setup(registry, max_batch_size, batch_wait_timeout_s)
        self.task = task
        self.compile = compile
        self.http = http or {}
        self.batches = self.batched_inputs = 0
        self.predictor, self.start_error = load_serving(self.reg, task, compile)
        self.metrics.serving(task, self.predictor.ref.version)
        self._swap_lock = threading.Lock()
        self.watcher = _Watcher(self.reg, [task], refresh_s, self._swap, self.metrics)
        if self.start_error:  # the best failed just now: the next try waits for the backoff
            self.watcher.failed({task: self.reg.best(task)}, RuntimeError(self.start_error))

    def __serve_build_asgi_app__(self):
        h = self.http
        app = make_app(
            _OneTask(self, h.get("max_inputs", 64)),
            h.get("max_body_bytes", 1_000_000),
            auth=AuthConfig.model_validate(h.get("auth") or {}),
            cors_origins=h.get("cors_origins") or [],
            limits=Limits.model_validate(h.get("limits") or {}),
        )

        root = h.get("root_path", "")

        async def api_path(scope, receive, send):
            # Serve mounts this app at <prefix>/v1/predict/<task> (its root_path); the API's
            # routes are written from the main application's prefix
            if scope["type"] in ("http", "websocket"):
                scope = {**scope, "root_path": root}
            await app(scope, receive, send)

        return api_path

    def _swap(self, wanted: dict[str, str | None]) -> None:
        version = wanted[self.task]
        with self._swap_lock:
            if version is None:
                return
            if version == self.predictor.ref.version:
                self.start_error = None  # (a rollback to it) the best is what this serves
                return
            new = load_task(self.reg, self.task, version, self.compile)  # smoke-tested first
            old = self.predictor.ref.version
            self.predictor = new  # one assignment: requests see the old or the new model
            self.start_error = None
            self.metrics.serving(self.task, version, replaced=old)
            log.info("task %s: swapped %s -> %s", self.task, old, version)

    def reconfigure(self, user_config: dict) -> None:
        """user_config {refresh_token}: Serve calls this on deploy and whenever it changes
        (`jobs/deploy.py --refresh`); the registry is checked now instead of at the next poll."""
        if hasattr(self, "watcher"):
            self.watcher.check(force=not self.watcher.error)

    def load_error(self) -> str | None:
        """Why the replica serves another version than the task's promoted best (None if not)."""
        return self.watcher.error or self.start_error

    async def info(self) -> dict:
        return {**self.predictor.info(), "load_error": self.load_error()}

    async def stats(self) -> dict:
        return {
            "model_calls": self.predictor.calls,
            "batches": self.batches,  # dynamic batches and the inputs they held
            "batched_inputs": self.batched_inputs,
            "load_failures": self.watcher.failures,  # promoted versions that did not load
            "version": self.predictor.ref.version,
            "pid": os.getpid(),  # which replica answered (operators, the fault test)
        }

    async def predict(self, inputs: list, options: dict | None = None) -> dict:
        p = self.predictor  # this request is answered by this version, whatever swaps meanwhile
        return await self._answer(
            (self.task, p.ref.version),
            p.ref,
            lambda: p.parse(inputs, **(options or {})),
            lambda items: self._batched((p, items)),
            task=self.task,
        )

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, requests: list[tuple[TaskPredictor, list]]) -> list[list[dict]]:
        # requests of one batch normally share a version; around a swap they may not
        groups: dict[int, list[int]] = {}
        for i, (p, _) in enumerate(requests):
            groups.setdefault(id(p), []).append(i)
        out: list[list[dict]] = [[] for _ in requests]
        for idx in groups.values():
            p = requests[idx[0]][0]
            flat = [it for i in idx for it in requests[i][1]]
            self.metrics.model_call(self.task, p.ref.version, len(flat))
            self.batches, self.batched_inputs = self.batches + 1, self.batched_inputs + len(flat)
            preds = await _run(p.task.whole_model, p.predict, flat)
            k = 0
            for i in idx:
                n = len(requests[i][1])
                out[i] = preds[k : k + n]
                k += n
        return out

    def check_health(self) -> None:
        self.predictor.smoke()


# behind the ingress (a handle's target), or, with one hop, the HTTP ingress of its own
# application (Serve allows one ASGI deployment per application: two classes)
TaskDeployment = serve.deployment(max_ongoing_requests=256)(TaskReplica)
TaskIngress = serve.deployment(max_ongoing_requests=256)(serve.ingress()(TaskReplica))


def task_problems(infos: list[dict]) -> list[str]:
    """/healthz's problems from /v1/tasks entries: which tasks serve an older version than
    their promoted best (why is in /v1/tasks, behind the API keys)."""
    return [
        f"task {i['task']} serves {i['model']['version']}, not its promoted best: see /v1/tasks"
        for i in infos
        if i.get("load_error")
    ]


class _OneTask:
    """A task replica as the backend of its own HTTP app (one hop): the API's predict route
    for this task; its other routes belong to the main application."""

    def __init__(self, dep: TaskReplica, max_inputs: int):
        self.dep, self.max_inputs = dep, max_inputs

    async def ready(self) -> bool:
        return self.dep.predictor is not None

    async def problems(self) -> list[str]:
        return task_problems([await self.dep.info()])

    async def tasks(self) -> list[dict]:
        return [await self.dep.info()]

    async def predict(self, task: str, inputs: list, options: dict) -> dict:
        if task != self.dep.task:
            raise ApiError(404, "not_found", f"unknown task {task!r}")
        return raise_error(await self.dep.predict(inputs, options))

    async def fill_mask(self, inputs: list[str], top_k: int) -> dict:
        raise ApiError(404, "not_found", "no such route (see /docs)")

    async def generate(self, inputs: list[str], **params) -> dict:
        raise ApiError(404, "not_found", "no such route (see /docs)")

    async def generate_stream(self, text: str, **params):
        raise ApiError(404, "not_found", "no such route (see /docs)")


@serve.deployment(max_ongoing_requests=256)
class SharedEncoderDeployment(_ModelDeployment):
    """Frozen-feature tasks from one parent: one encoder forward per batch for all of them."""

    def __init__(
        self,
        registry: str,
        tasks: list[str],
        max_batch_size: int = MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = BATCH_WAIT_S,
        refresh_s: float = 2.0,
    ):
        self._setup(registry, max_batch_size, batch_wait_timeout_s)
        self.tasks = list(tasks)
        loaded = {t: load_serving(self.reg, t) for t in self.tasks}
        self.start_errors = {t: err for t, (_, err) in loaded.items() if err}
        self.group = SharedEncoder({t: p for t, (p, _) in loaded.items()})
        for t, p in self.group.predictors.items():
            self.metrics.serving(t, p.ref.version)
        self._swap_lock = threading.Lock()
        self.watcher = _Watcher(self.reg, self.tasks, refresh_s, self._swap, self.metrics)
        if self.start_errors:  # a best failed just now: the next try waits for the backoff
            wanted = {t: self.reg.best(t) for t in self.tasks}
            self.watcher.failed(wanted, RuntimeError("; ".join(self.start_errors.values())))

    def _load(self, versions: dict[str, str | None]) -> SharedEncoder:
        preds = {}
        for t, v in versions.items():
            if v is None:
                raise ValueError(f"task {t!r} has no promoted best model in {self.reg.uri}")
            preds[t] = TaskPredictor(self.reg.local_path("tasks", t, v), _task_ref(self.reg, t, v))
        group = SharedEncoder(preds)
        for p in group.predictors.values():
            p.smoke()
        return group

    def _swap(self, wanted: dict[str, str | None]) -> None:
        with self._swap_lock:
            have = {t: p.ref.version for t, p in self.group.predictors.items()}
            for t in [t for t in self.start_errors if wanted[t] == have[t]]:
                del self.start_errors[t]  # (a rollback to it) the best is what this serves
            if all(v is None or have[t] == v for t, v in wanted.items()):
                return
            merged = {t: (wanted[t] or have[t]) for t in self.tasks}
            self.group = self._load(merged)  # raises (and keeps the old group) if not shareable
            self.start_errors = {}
            for t, v in merged.items():
                self.metrics.serving(t, v, replaced=have[t] if have[t] != v else None)
            log.info("shared encoder group %s: now %s", self.tasks, merged)

    def reconfigure(self, user_config: dict) -> None:
        if hasattr(self, "watcher"):
            self.watcher.check(force=not self.watcher.error)

    async def info(self, task: str) -> dict:
        error = self.watcher.error or self.start_errors.get(task)
        return {**self.group.predictors[task].info(), "load_error": error}

    async def stats(self) -> dict:
        return {
            "encoder_calls": self.group.calls,
            "model_calls": self.group.calls,
            "largest_forward": self.group.largest_forward,  # padded tokens
            "versions": {t: p.ref.version for t, p in self.group.predictors.items()},
        }

    async def predict(self, task: str, inputs: list, options: dict | None = None) -> dict:
        group = self.group  # this request is answered by this group, whatever swaps meanwhile
        p = group.predictors[task]
        return await self._answer(
            (task, p.ref.version),
            p.ref,
            lambda: p.parse(inputs, **(options or {})),
            lambda items: self._batched((group, task, items)),
            task=task,
        )

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, requests: list[tuple[SharedEncoder, str, list]]) -> list[list[dict]]:
        groups: dict[int, list[int]] = {}
        for i, (g, _, _) in enumerate(requests):
            groups.setdefault(id(g), []).append(i)
        out: list[list[dict]] = [[] for _ in requests]
        for idx in groups.values():
            g = requests[idx[0]][0]
            per_task: dict[str, int] = {}
            for i in idx:  # one encoder forward; each task's share of its inputs
                per_task[requests[i][1]] = per_task.get(requests[i][1], 0) + len(requests[i][2])
            for t, n in per_task.items():
                self.metrics.model_call(t, g.predictors[t].ref.version, n)
            res = await _run(False, g.predict, [(requests[i][1], requests[i][2]) for i in idx])
            for i, r in zip(idx, res):
                out[i] = r
        return out

    def check_health(self) -> None:
        for p in self.group.predictors.values():
            p.smoke()


@serve.deployment(max_ongoing_requests=128)
class FillMaskDeployment(_ModelDeployment):
    """A pretrained BERT's masked-token predictions, batched across requests."""

    def __init__(
        self,
        registry: str,
        model: str,
        max_batch_size: int = MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = BATCH_WAIT_S,
    ):
        self._setup(registry, max_batch_size, batch_wait_timeout_s)
        self.p = self._pretrained(model, FillMaskPredictor)
        self.version = f"{self.p.ref.name}@{self.p.ref.version}"
        self.metrics.serving("fill-mask", self.version)

    async def predict(self, inputs: list[str], top_k: int) -> dict:
        return await self._answer(
            ("fill-mask", self.version),
            self.p.ref,
            lambda: self.p.parse(inputs),
            lambda items: self._batched((items, top_k)),
        )

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, requests: list[tuple[list, int]]) -> list[list[dict]]:
        flat = [it for items, _ in requests for it in items]
        self.metrics.model_call("fill-mask", self.version, len(flat))
        k = max(t for _, t in requests)  # one top-k for the batch, cut per request below
        preds = await _run(False, self.p.predict, flat, k)
        out, i = [], 0
        for items, top_k in requests:
            part = preds[i : i + len(items)]
            i += len(items)
            for pr in part:
                pr["masks"] = [m[:top_k] for m in pr["masks"]]
            out.append(part)
        return out

    async def stats(self) -> dict:
        return {
            "model_calls": self.p.calls,
            "largest_forward": self.p.largest_forward,  # padded tokens
            "pid": os.getpid(),
        }

    def check_health(self) -> None:
        self.p.predict(self.p.parse(["a [MASK] ."]), 1)


class _Deadline:
    """One generation request's end: its timeout (the API's request_timeout_s, counted here
    too, since a handle call's cancellation may not reach a thread) or its cancellation."""

    def __init__(self, timeout_s: float):
        self.at = time.monotonic() + timeout_s
        self.cancelled = threading.Event()

    def passed(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.at


@serve.deployment(max_ongoing_requests=64)
class GenerateDeployment(_ModelDeployment):
    """A pretrained GPT: continuations batched across requests that ask the same (length,
    temperature, top-k, stop), or one streamed token by token. Work stops between two decoding
    steps once its requests timed out or were cancelled, and requests interleave step by step
    (the model lock is held per step), so one long request does not hold the replica."""

    def __init__(
        self,
        registry: str,
        model: str,
        max_batch_size: int = MAX_BATCH_SIZE,
        batch_wait_timeout_s: float = BATCH_WAIT_S,
        timeout_s: float = 30.0,
    ):
        self._setup(registry, max_batch_size, batch_wait_timeout_s)
        self.p = self._pretrained(model, GeneratePredictor)
        self.version = f"{self.p.ref.name}@{self.p.ref.version}"
        self.timeout_s = timeout_s
        self.stopped = 0  # generate calls given up (timed out or cancelled)
        self.metrics.serving("generate", self.version)

    async def predict(
        self,
        inputs: list[str],
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        stop: list[str] | None = None,
    ) -> dict:
        params = (max_new_tokens, temperature, top_k, tuple(stop or ()))

        async def batched(items: list):
            deadline = _Deadline(self.timeout_s)
            try:
                return await self._batched((items, params, deadline))
            except asyncio.CancelledError:  # the caller gave up (504, disconnect): so does the work
                deadline.cancelled.set()
                raise

        return await self._answer(
            ("generate", self.version), self.p.ref, lambda: self.p.parse(inputs), batched
        )

    # several batches at once: each runs in its own thread, step by step under the model lock,
    # so a new request's batch starts while a long one is still decoding
    @serve.batch(
        max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S, max_concurrent_batches=4
    )
    async def _batched(self, requests: list[tuple[list, tuple, _Deadline]]) -> list:
        groups: dict[tuple, list[int]] = {}  # one generate call per set of parameters
        for i, (_, params, _) in enumerate(requests):
            groups.setdefault(params, []).append(i)
        out: list = [[] for _ in requests]
        for (n, temperature, top_k, stop), idx in groups.items():
            flat = [it for i in idx for it in requests[i][0]]
            ends = [requests[i][2] for i in idx]
            self.metrics.model_call("generate", self.version, len(flat))
            try:
                preds = await _run(
                    True,
                    self.p.predict,
                    flat,
                    n,
                    temperature,
                    top_k,
                    None,
                    list(stop),
                    lambda ends=ends: all(e.passed() for e in ends),
                )
            except Stopped as e:
                self.stopped += 1
                for i in idx:
                    out[i] = _timed_out(e)
                continue
            k = 0
            for i in idx:
                out[i] = preds[k : k + len(requests[i][0])]
                k += len(requests[i][0])
        return out

    async def stream(
        self,
        text: str,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        stop: list[str] | None = None,
    ):
        """Events of one streamed continuation (an `error` event first if the input is bad)."""
        t0 = time.perf_counter()
        try:
            items = self.p.parse([text])
        except InputError as e:
            self.metrics.answered("generate", self.version, False, t0)
            yield _error(e)
            return
        self.metrics.model_call("generate", self.version, 1)
        deadline = _Deadline(self.timeout_s)
        steps = self.p.stream(items[0], max_new_tokens, temperature, top_k, stop, deadline.passed)
        try:
            # each step in a thread: the loop keeps serving other requests between tokens
            while (event := await asyncio.to_thread(next, steps, None)) is not None:
                yield event
        except Stopped as e:
            self.stopped += 1
            yield _timed_out(e)
            return
        except (asyncio.CancelledError, GeneratorExit):
            # the client left (or the ingress timed out) while a step runs in its thread: the
            # generator cannot be closed from here then; it stops itself before its next step
            deadline.cancelled.set()
            raise
        finally:
            with contextlib.suppress(ValueError):  # "generator already executing"
                steps.close()
        self.metrics.answered("generate", self.version, True, t0)

    async def stats(self) -> dict:
        return {
            "model_calls": self.p.calls,
            "steps": self.p.steps,  # decoding steps run
            "stopped": self.stopped,
            "pid": os.getpid(),
        }

    def check_health(self) -> None:
        self.p.predict(self.p.parse(["a"]), 1, 0.0, None)


# ----------------------------------------------------------------------------- app builder


def serve_tasks(cfg: ServeConfig) -> list[str]:
    reg = Registry(cfg.registry)
    if cfg.tasks is not None:
        missing = [t for t in cfg.tasks if reg.best(t) is None]
        if missing:
            raise ValueError(
                f"tasks without a promoted best model in {reg.uri}: {', '.join(missing)}"
            )
        return list(cfg.tasks)
    return [t for t in reg.names("tasks") if reg.best(t) is not None]


def task_app_name(cfg: ServeConfig, task: str) -> str:
    return f"{cfg.app_name}-{task}"


def task_route(cfg: ServeConfig, task: str) -> str:
    return f"{cfg.route_prefix.rstrip('/')}/v1/predict/{task}"


def _options(cfg: ServeConfig) -> dict:
    """Replica options every model deployment shares."""
    a = cfg.autoscaling
    return {
        "autoscaling_config": {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        },
        "ray_actor_options": {
            "num_cpus": cfg.replica_cpus,
            **({"num_gpus": cfg.replica_gpus} if cfg.replica_gpus else {}),
        },
    }


def replica_demand(cfg: ServeConfig, tasks: list[str]) -> dict[str, float]:
    """What the deployments of `tasks` reserve once every one has its `min_replicas`
    ({"CPU": …, "GPU": …}), and how: one model deployment per task outside a shared-encoder
    group, one per group, fill-mask and generate when set, and the ingress."""
    grouped = {t for g in cfg.shared_encoder_groups for t in g}
    models = len([t for t in tasks if t not in grouped]) + len(cfg.shared_encoder_groups)
    models += bool(cfg.fill_mask_model) + bool(cfg.generate_model)
    n = cfg.autoscaling.min_replicas
    return {
        "CPU": n * (models * cfg.replica_cpus + cfg.ingress_cpus),
        "GPU": n * models * cfg.replica_gpus,
        "model_deployments": models,
    }


def fit_problem(
    cfg: ServeConfig, tasks: list[str], cluster: dict[str, float]
) -> tuple[str, str] | None:
    """Why the deployments cannot all start on a cluster of these total resources, and the fix
    (None when they fit, or when the cluster launcher may add nodes with what is missing).
    Serve would otherwise wait for CPUs that never come, logging every 30 s."""
    from lmplatform.runtime import cluster_can_grow

    need = replica_demand(cfg, tasks)
    models, n = int(need["model_deployments"]), cfg.autoscaling.min_replicas
    for res, per in (("CPU", "replica_cpus"), ("GPU", "replica_gpus")):
        have = cluster.get(res, 0.0)
        if need[res] <= have + 1e-9 or cluster_can_grow(res):
            continue
        ingress = n * cfg.ingress_cpus if res == "CPU" else 0.0
        fits = max(int((have - ingress) / max(models * n, 1) * 100) / 100, 0)
        return (
            f"serving needs {need[res]:g} {res}s with every deployment at its minimum "
            f"({models} model deployment(s) x min_replicas {n} x {per}={getattr(cfg, per):g}"
            + (f", plus {ingress:g} for the ingress" if ingress else "")
            + f"), but the cluster has {have:g}",
            f"set {per}={fits:g} (or serve fewer tasks)",
        )
    return None


def _batching(cfg: ServeConfig) -> dict:
    return {"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s}


def _http(cfg: ServeConfig) -> dict:
    """What an HTTP-facing replica needs of the config (plain data: it crosses to replicas)."""
    return {
        "max_inputs": cfg.max_inputs,
        "max_body_bytes": cfg.max_body_bytes,
        "root_path": cfg.route_prefix.rstrip("/"),
        "auth": cfg.auth.model_dump(),
        "cors_origins": cfg.cors_origins,
        "limits": {
            k: getattr(cfg, k)
            for k in ("max_queued_requests", "request_timeout_s", "retry_after_s")
        },
    }


def _task_deployment(cfg: ServeConfig, task: str, http: dict | None) -> serve.Application:
    ongoing = max(4 * cfg.max_batch_size, 32)  # batches must be able to fill
    if http is not None:  # it faces HTTP: Serve hands it more than it admits (our own 503)
        ongoing = max(ongoing, cfg.max_queued_requests + 64)
    return (
        (TaskDeployment if http is None else TaskIngress)
        .options(
            name=f"task-{task}",
            max_ongoing_requests=ongoing,
            user_config={"refresh_token": cfg.refresh_token},
            health_check_period_s=cfg.health_check_period_s,
            **_options(cfg),
        )
        .bind(
            cfg.registry,
            task,
            refresh_s=cfg.refresh_s,
            compile=cfg.compile,
            http=http,
            **_batching(cfg),
        )
    )


def _one_hop_tasks(cfg: ServeConfig, tasks: list[str]) -> list[str]:
    grouped = {t for g in cfg.shared_encoder_groups for t in g}
    return [t for t in tasks if t not in grouped] if cfg.one_hop else []


def task_apps(cfg: ServeConfig) -> dict[str, tuple[str, serve.Application]]:
    """With one hop: application name -> (route prefix, application) of each task."""
    http = _http(cfg)
    return {
        task_app_name(cfg, t): (task_route(cfg, t), _task_deployment(cfg, t, http))
        for t in _one_hop_tasks(cfg, serve_tasks(cfg))
    }


def serve_bind_host() -> str | None:
    """Where this cluster's Serve proxies really listen (its controller's http_options: what
    `serve deploy` set, whatever the application's args say), or None when no Serve runs yet
    (run_app then starts it on the config's host)."""
    if not ray.is_initialized():
        return None
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else client.http_config.host


def check_bind(cfg: ServeConfig, host: str | None) -> None:
    """Refuse to serve the config's API on a Serve bound beyond loopback without keys."""
    problem = host is not None and exposure_problem(host, cfg.auth, "http_options.host")
    if problem:
        raise ValueError(f"{problem} (Serve's proxies listen where http_options.host says)")


def build(cfg: ServeConfig) -> serve.Application:
    """The main application (the ingress: /v1/tasks, /healthz, fill-mask, generate, and the
    tasks that have no application of their own) for a validated config."""
    check_bind(cfg, serve_bind_host())
    tasks = serve_tasks(cfg)
    grouped = {t for g in cfg.shared_encoder_groups for t in g}
    unknown = grouped - set(tasks)
    if unknown:
        raise ValueError(f"shared_encoder_groups name tasks that are not served: {sorted(unknown)}")
    own_app = set(_one_hop_tasks(cfg, tasks))
    opts, batch = _options(cfg), _batching(cfg)
    ongoing = max(4 * cfg.max_batch_size, 32)
    routes: dict = {}
    shared = []
    for t in tasks:
        if t in own_app:  # the ingress still lists it and checks its health, by name
            routes[t] = (task_app_name(cfg, t), f"task-{t}")
        elif t not in grouped:
            routes[t] = _task_deployment(cfg, t, None)
    for i, g in enumerate(cfg.shared_encoder_groups):
        h = SharedEncoderDeployment.options(
            name=f"shared-encoder-{i}",
            max_ongoing_requests=ongoing,
            user_config={"refresh_token": cfg.refresh_token},
            health_check_period_s=cfg.health_check_period_s,
            **opts,
        ).bind(cfg.registry, g, refresh_s=cfg.refresh_s, **batch)
        for t in g:
            routes[t] = h
            shared.append(t)
    fill = gen = None
    if cfg.fill_mask_model:
        fill = FillMaskDeployment.options(max_ongoing_requests=ongoing, **opts).bind(
            cfg.registry, cfg.fill_mask_model, **batch
        )
    if cfg.generate_model:
        gen = GenerateDeployment.options(max_ongoing_requests=ongoing, **opts).bind(
            cfg.registry, cfg.generate_model, timeout_s=cfg.request_timeout_s, **batch
        )
    http = _http(cfg)
    return Ingress.options(
        autoscaling_config=opts["autoscaling_config"],
        ray_actor_options={"num_cpus": cfg.ingress_cpus},
        # Serve hands the ingress more than it admits: the bound is ours, with our envelope
        max_ongoing_requests=cfg.max_queued_requests + 64,
    ).bind(
        routes,
        shared,
        fill,
        gen,
        http["max_inputs"],
        http["max_body_bytes"],
        http["auth"],
        http["cors_origins"],
        http["limits"],
    )


def deploy(cfg: ServeConfig, blocking: bool = False) -> None:
    """Run every application of the config: each task's own (one hop) first, since the main
    one looks their deployments up by name; then the main one. Nothing runs when Serve
    binds beyond loopback and the config has no keys."""
    check_bind(cfg, serve_bind_host())
    for name, (prefix, app) in task_apps(cfg).items():
        serve.run(app, name=name, route_prefix=prefix, blocking=False)
    serve.run(build(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=blocking)


def delete(cfg: ServeConfig) -> None:
    """Remove the config's applications (the main one and each task's)."""
    names = [cfg.app_name, *(task_app_name(cfg, t) for t in _one_hop_tasks(cfg, serve_tasks(cfg)))]
    for name in names:
        serve.delete(name)


def read_serve_config(path, overrides: list[str] = ()) -> ServeConfig:
    """Ray Serve's config file (its first application's args and http_options) or a plain
    ServeConfig YAML, with key=value overrides applied to the args."""
    from lmplatform.config import ConfigError, apply_overrides, read_yaml, validate

    raw = read_yaml(path)
    if "applications" in raw:
        apps = raw["applications"] or []
        if not apps:
            raise ConfigError(f"{path}: applications is empty")
        args = dict(apps[0].get("args") or {})
        http = raw.get("http_options") or {}
        for k in ("host", "port"):
            if k in http:
                args.setdefault(k, http[k])
        args.setdefault("app_name", apps[0].get("name", "lmplatform"))
        args.setdefault("route_prefix", apps[0].get("route_prefix", "/"))
        raw = args
    return validate(ServeConfig, apply_overrides(raw, list(overrides)))


def run_app(cfg: ServeConfig, wait_s: float = 600) -> str:
    """Deploy the application and wait until it is RUNNING; returns its base URL."""
    from lmplatform.config import ConfigError

    problem = fit_problem(cfg, serve_tasks(cfg), ray.cluster_resources())
    if problem:
        raise ConfigError("{}: {}".format(*problem))
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    deploy(cfg)
    names = [cfg.app_name, *task_apps(cfg)]
    deadline = time.time() + wait_s
    while True:
        apps = serve.status().applications
        states = {n: apps.get(n) for n in names}
        if all(st is not None and st.status == "RUNNING" for st in states.values()):
            return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
        for n, st in states.items():
            if st is not None and st.status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise RuntimeError(f"application {n} {st.status}: {st.message}")
        if time.time() > deadline:
            waiting = [n for n, st in states.items() if st is None or st.status != "RUNNING"]
            raise RuntimeError(f"applications {waiting} not RUNNING after {wait_s:.0f}s")
        time.sleep(1)
