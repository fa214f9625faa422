"""Ray Serve deployments over the registry: one per task (or per shared-encoder group), fill-mask,
generate (the app graph that wires them behind the ingress: serving/graph.py).

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

from ray import serve

from lmplatform.models.gpt.model import Sampling
from lmplatform.registry.adapters import adapter_of
from lmplatform.registry.store import Registry
from lmplatform.serving.adapters import Adapter, AdapterGroup, SharedBase, load_adapter
from lmplatform.serving.api import ApiError, Limits, make_app
from lmplatform.serving.config import BATCH_WAIT_S, MAX_BATCH_SIZE
from lmplatform.serving.ingress import raise_error
from lmplatform.serving.loading import (
    _error,
    _task_ref,
    _timed_out,
    _Watcher,
    load_serving,
    load_task,
)
from lmplatform.serving.predictors import (
    FillMaskPredictor,
    GeneratePredictor,
    InputError,
    ModelInfo,
    SharedEncoder,
    Stopped,
    TaskPredictor,
)
from lmplatform.serving.security import AuthConfig
from lmplatform.serving.telemetry import ServingMetrics

log = logging.getLogger("ray.serve")


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
        quantize: str | None = None,
        http: dict | None = None,
    ):
        self._setup(registry, max_batch_size, batch_wait_timeout_s)
        self.task = task
        self.compile, self.quantize = compile, quantize
        self.http = http or {}
        self.batches = self.batched_inputs = 0
        self.predictor, self.start_error = load_serving(
            self.reg, task, lambda v: load_task(self.reg, task, v, compile, quantize)
        )
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
            # smoke-tested first
            new = load_task(self.reg, self.task, version, self.compile, self.quantize)
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

    async def generation_model(self) -> dict | None:
        return None


class _GroupReplica(_ModelDeployment):
    """Tasks answered together by one deployment (a group model: one forward per batch for
    all of them); subclasses say how one task's version loads and how a group is made."""

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
        loaded = {t: load_serving(self.reg, t, lambda v, t=t: self._load_one(t, v)) for t in tasks}
        self.start_errors = {t: err for t, (_, err) in loaded.items() if err}
        self.group = self._group({t: m for t, (m, _) in loaded.items()})
        self.group.smoke()
        for t, p in self.group.predictors.items():
            self.metrics.serving(t, p.ref.version)
        self._swap_lock = threading.Lock()
        self.watcher = _Watcher(self.reg, self.tasks, refresh_s, self._swap, self.metrics)
        if self.start_errors:  # a best failed just now: the next try waits for the backoff
            wanted = {t: self.reg.best(t) for t in self.tasks}
            self.watcher.failed(wanted, RuntimeError("; ".join(self.start_errors.values())))

    def _load_one(self, task: str, version: str):
        raise NotImplementedError

    def _group(self, members: dict):
        raise NotImplementedError

    def _member(self, task: str):
        """What `_load_one` gave for the task the group serves now."""
        raise NotImplementedError

    def _load(self, versions: dict[str, str | None]):
        """A group serving `versions`: only the tasks whose version changed are loaded."""
        have = {t: p.ref.version for t, p in self.group.predictors.items()}
        members = {}
        for t, v in versions.items():
            if v is None:
                raise ValueError(f"task {t!r} has no promoted best model in {self.reg.uri}")
            members[t] = self._member(t) if have.get(t) == v else self._load_one(t, v)
        group = self._group(members)
        group.smoke()
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
            log.info("%s %s: now %s", type(self).__name__, self.tasks, merged)

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
        self.group.smoke()


@serve.deployment(max_ongoing_requests=256)
class SharedEncoderDeployment(_GroupReplica):
    """Frozen-feature tasks from one parent: one encoder forward per batch for all of them."""

    def _load_one(self, task: str, version: str) -> TaskPredictor:
        p = TaskPredictor(
            self.reg.local_path("tasks", task, version), _task_ref(self.reg, task, version)
        )
        p.smoke()  # its own whole model, before it joins: a version that cannot answer is not
        return p

    def _group(self, members: dict[str, TaskPredictor]) -> SharedEncoder:
        return SharedEncoder(members)

    def _member(self, task: str) -> TaskPredictor:
        return self.group.predictors[task]


@serve.deployment(max_ongoing_requests=256)
class AdapterGroupDeployment(_GroupReplica):
    """Tasks whose bests are LoRA adapter versions on one base: the base once in memory, every
    task's adapters beside it, one forward through the base per batch of any of them; a
    promotion loads only that task's adapters (serving/adapters.py)."""

    base: SharedBase | None = None
    base_loads = 0  # the base is loaded once per replica: the hot-swap test reads it

    def _load_one(self, task: str, version: str) -> Adapter:
        if self.base is None:
            self.base = self._shared_base()
            self.base_loads += 1
        one = load_adapter(self.reg, self.base, task, version, _task_ref(self.reg, task, version))
        AdapterGroup(self.base, {task: one}).smoke()  # alone, before it joins
        return one

    def _shared_base(self) -> SharedBase:
        """The base most of the tasks' bests sit on (the others cannot join: their versions
        fall back, or the replica says which cannot load)."""
        bases: dict[tuple, tuple[dict, str]] = {}
        counts: dict[tuple, int] = {}
        for t in self.tasks:
            v = self.reg.best(t)
            a = adapter_of(self.reg.metadata("tasks", t, v)) if v else None
            if a is not None:
                key = (a.get("base"), a.get("base_digest"))
                bases.setdefault(key, (a, f"tasks/{t}@{v}"))
                counts[key] = counts.get(key, 0) + 1
        if not counts:
            raise ValueError(f"none of {self.tasks} has an adapter version as its best")
        return SharedBase(self.reg, *bases[max(counts, key=counts.get)])

    def _group(self, members: dict[str, Adapter]) -> AdapterGroup:
        return AdapterGroup(self.base, members)

    def _member(self, task: str) -> Adapter:
        return self.group.adapters[task]

    async def stats(self) -> dict:
        return {**(await super().stats()), "base_loads": self.base_loads}


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
    temperature, top-k, top-p, stop), or one streamed token by token. Work stops between two decoding
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
        top_p: float = 1.0,
    ) -> dict:
        params = (max_new_tokens, Sampling(temperature, top_k, top_p), tuple(stop or ()))

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
        for (n, sampling, stop), idx in groups.items():
            flat = [it for i in idx for it in requests[i][0]]
            ends = [requests[i][2] for i in idx]
            self.metrics.model_call("generate", self.version, len(flat))
            try:
                preds = await _run(
                    True,
                    self.p.predict,
                    flat,
                    n,
                    sampling,
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
        top_p: float = 1.0,
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
        steps = self.p.stream(
            items[0], max_new_tokens, Sampling(temperature, top_k, top_p), stop, deadline.passed
        )
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

    async def model(self) -> dict:
        """What /v1/models says of it: registry name and version, when it was registered, and
        its context length in tokens."""
        ref = self.p.ref
        return {
            "name": ref.name,
            "version": ref.version,
            "created": self.p.created,
            "context": self.p.max_len,
        }

    def check_health(self) -> None:
        self.p.predict(self.p.parse(["a"]), 1, Sampling())
