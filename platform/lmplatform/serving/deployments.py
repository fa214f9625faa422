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
import logging
import os
import threading
import time

from ray import serve

from lmplatform.registry import Registry
from lmplatform.serving.config import ServeConfig
from lmplatform.serving.ingress import Ingress
from lmplatform.serving.predictors import (
    FillMaskPredictor,
    GeneratePredictor,
    InputError,
    ModelInfo,
    SharedEncoder,
    TaskPredictor,
)
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


def _error(e: Exception) -> dict:
    status = 422 if isinstance(e, InputError) else 404
    return {"error": {"status": status, "message": str(e)}}


class _Watcher:
    """Polls the registry for new `best` versions of some tasks and calls `swap` with them."""

    def __init__(self, reg: Registry, tasks: list[str], refresh_s: float, swap):
        self.reg, self.tasks, self.refresh_s, self.swap = reg, tasks, refresh_s, swap
        self._kick = threading.Event()
        self.error: str | None = None
        if refresh_s > 0:
            threading.Thread(target=self._run, daemon=True, name="registry-watch").start()

    def check_now(self) -> None:
        self._kick.set()

    def _run(self) -> None:
        while True:
            self._kick.wait(self.refresh_s)
            self._kick.clear()
            try:
                wanted = {t: self.reg.best(t) for t in self.tasks}
                self.swap(wanted)
                self.error = None
            except Exception as e:  # keep serving the loaded version; report on health
                self.error = f"{type(e).__name__}: {e}"
                log.warning("registry check failed: %s", self.error)


@serve.deployment(max_ongoing_requests=256)
class TaskDeployment:
    """One task's best model."""

    def __init__(
        self,
        registry: str,
        task: str,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        refresh_s: float = 2.0,
        compile: str | None = None,
    ):
        self.reg = Registry(registry)
        self.task = task
        self.compile = compile
        self.predictor = load_task(self.reg, task, compile=compile)
        self.metrics = ServingMetrics()
        self.metrics.serving(task, self.predictor.ref.version)
        self._swap_lock = threading.Lock()
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.watcher = _Watcher(self.reg, [task], refresh_s, self._swap)

    def _swap(self, wanted: dict[str, str | None]) -> None:
        version = wanted[self.task]
        with self._swap_lock:
            if version is None or version == self.predictor.ref.version:
                return
            new = load_task(self.reg, self.task, version, self.compile)  # smoke-tested first
            old = self.predictor.ref.version
            self.predictor = new  # one assignment: requests see the old or the new model
            self.metrics.serving(self.task, version, replaced=old)
            log.info("task %s: swapped %s -> %s", self.task, old, version)

    def reconfigure(self, user_config: dict) -> None:
        """user_config {refresh_token}: Serve calls this on deploy and whenever it changes
        (`jobs/deploy.py --refresh`); the registry is checked now instead of at the next poll."""
        if hasattr(self, "watcher"):
            self._swap({self.task: self.reg.best(self.task)})

    async def info(self) -> dict:
        return self.predictor.info()

    async def stats(self) -> dict:
        return {
            "model_calls": self.predictor.calls,
            "version": self.predictor.ref.version,
            "pid": os.getpid(),  # which replica answered (operators, the fault test)
        }

    async def predict(self, inputs: list, options: dict | None = None) -> dict:
        t0 = time.perf_counter()
        p = self.predictor  # this request is answered by this version, whatever swaps meanwhile
        try:
            items = p.parse(inputs, **(options or {}))
        except InputError as e:
            self.metrics.answered(self.task, p.ref.version, False, t0)
            return _error(e)
        preds = await self._batched((p, items))
        self.metrics.answered(self.task, p.ref.version, True, t0)
        return {
            "task": self.task,
            "model": {"name": p.ref.name, "version": p.ref.version},
            "predictions": preds,
        }

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
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
            preds = await asyncio.to_thread(p.predict, flat)
            k = 0
            for i in idx:
                n = len(requests[i][1])
                out[i] = preds[k : k + n]
                k += n
        return out

    def check_health(self) -> None:
        self.predictor.smoke()


@serve.deployment(max_ongoing_requests=256)
class SharedEncoderDeployment:
    """Frozen-feature tasks from one parent: one encoder forward per batch for all of them."""

    def __init__(
        self,
        registry: str,
        tasks: list[str],
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        refresh_s: float = 2.0,
    ):
        self.reg = Registry(registry)
        self.tasks = list(tasks)
        self.group = self._load({t: self.reg.best(t) for t in self.tasks})
        self.metrics = ServingMetrics()
        for t, p in self.group.predictors.items():
            self.metrics.serving(t, p.ref.version)
        self._swap_lock = threading.Lock()
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.watcher = _Watcher(self.reg, self.tasks, refresh_s, self._swap)

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
            if all(v is None or have[t] == v for t, v in wanted.items()):
                return
            merged = {t: (wanted[t] or have[t]) for t in self.tasks}
            self.group = self._load(merged)  # raises (and keeps the old group) if not shareable
            for t, v in merged.items():
                self.metrics.serving(t, v, replaced=have[t] if have[t] != v else None)
            log.info("shared encoder group %s: now %s", self.tasks, merged)

    def reconfigure(self, user_config: dict) -> None:
        if hasattr(self, "watcher"):
            self._swap({t: self.reg.best(t) for t in self.tasks})

    async def info(self, task: str) -> dict:
        return self.group.predictors[task].info()

    async def stats(self) -> dict:
        return {
            "encoder_calls": self.group.calls,
            "model_calls": self.group.calls,
            "versions": {t: p.ref.version for t, p in self.group.predictors.items()},
        }

    async def predict(self, task: str, inputs: list, options: dict | None = None) -> dict:
        t0 = time.perf_counter()
        group = self.group
        p = group.predictors[task]
        try:
            items = p.parse(inputs, **(options or {}))
        except InputError as e:
            self.metrics.answered(task, p.ref.version, False, t0)
            return _error(e)
        preds = await self._batched((group, task, items))
        self.metrics.answered(task, p.ref.version, True, t0)
        return {
            "task": task,
            "model": {"name": p.ref.name, "version": p.ref.version},
            "predictions": preds,
        }

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
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
            res = await asyncio.to_thread(
                g.predict, [(requests[i][1], requests[i][2]) for i in idx]
            )
            for i, r in zip(idx, res):
                out[i] = r
        return out

    def check_health(self) -> None:
        for p in self.group.predictors.values():
            p.smoke()


@serve.deployment(max_ongoing_requests=128)
class FillMaskDeployment:
    def __init__(
        self,
        registry: str,
        model: str,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
    ):
        reg = Registry(registry)
        name, version = reg.resolve("pretrained", model)
        self.p = FillMaskPredictor(
            reg.local_path("pretrained", name, version), ModelInfo(name=name, version=version)
        )
        self.metrics = ServingMetrics()
        self.metrics.serving("fill-mask", f"{name}@{version}")
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def predict(self, inputs: list[str], top_k: int) -> dict:
        t0, version = time.perf_counter(), f"{self.p.ref.name}@{self.p.ref.version}"
        try:
            items = self.p.parse(inputs)
        except InputError as e:
            self.metrics.answered("fill-mask", version, False, t0)
            return _error(e)
        preds = await self._batched((items, top_k))
        self.metrics.answered("fill-mask", version, True, t0)
        return {
            "model": {"name": self.p.ref.name, "version": self.p.ref.version},
            "predictions": preds,
        }

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, requests: list[tuple[list, int]]) -> list[list[dict]]:
        flat = [it for items, _ in requests for it in items]
        self.metrics.model_call("fill-mask", f"{self.p.ref.name}@{self.p.ref.version}", len(flat))
        k = max(t for _, t in requests)  # one top-k for the batch, cut per request below
        preds = await asyncio.to_thread(self.p.predict, flat, k)
        out, i = [], 0
        for items, top_k in requests:
            part = preds[i : i + len(items)]
            i += len(items)
            for pr in part:
                pr["masks"] = [m[:top_k] for m in pr["masks"]]
            out.append(part)
        return out

    async def stats(self) -> dict:
        return {"model_calls": self.p.calls}

    def check_health(self) -> None:
        self.p.predict(self.p.parse(["a [MASK] ."]), 1)


@serve.deployment(max_ongoing_requests=64)
class GenerateDeployment:
    def __init__(self, registry: str, model: str):
        reg = Registry(registry)
        name, version = reg.resolve("pretrained", model)
        self.p = GeneratePredictor(
            reg.local_path("pretrained", name, version), ModelInfo(name=name, version=version)
        )
        self.version = f"{name}@{version}"
        self.metrics = ServingMetrics()
        self.metrics.serving("generate", self.version)

    async def predict(
        self, inputs: list[str], max_new_tokens: int, temperature: float, top_k: int | None
    ) -> dict:
        t0 = time.perf_counter()
        try:
            items = self.p.parse(inputs)
        except InputError as e:
            self.metrics.answered("generate", self.version, False, t0)
            return _error(e)
        self.metrics.model_call("generate", self.version, len(items))
        preds = await asyncio.to_thread(self.p.predict, items, max_new_tokens, temperature, top_k)
        self.metrics.answered("generate", self.version, True, t0)
        return {
            "model": {"name": self.p.ref.name, "version": self.p.ref.version},
            "predictions": preds,
        }

    async def stats(self) -> dict:
        return {"model_calls": self.p.calls}

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


def build(cfg: ServeConfig) -> serve.Application:
    """The application graph for a validated config."""
    tasks = serve_tasks(cfg)
    grouped = {t for g in cfg.shared_encoder_groups for t in g}
    unknown = grouped - set(tasks)
    if unknown:
        raise ValueError(f"shared_encoder_groups name tasks that are not served: {sorted(unknown)}")
    a = cfg.autoscaling
    autoscaling = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
    }
    actor = {
        "num_cpus": cfg.replica_cpus,
        **({"num_gpus": cfg.replica_gpus} if cfg.replica_gpus else {}),
    }
    batch = {"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s}
    ongoing = max(4 * cfg.max_batch_size, 32)  # batches must be able to fill
    routes, shared = {}, []
    for t in tasks:
        if t in grouped:
            continue
        routes[t] = TaskDeployment.options(
            name=f"task-{t}",
            autoscaling_config=autoscaling,
            ray_actor_options=actor,
            max_ongoing_requests=ongoing,
            user_config={"refresh_token": cfg.refresh_token},
            health_check_period_s=cfg.health_check_period_s,
        ).bind(cfg.registry, t, refresh_s=cfg.refresh_s, compile=cfg.compile, **batch)
    for i, g in enumerate(cfg.shared_encoder_groups):
        h = SharedEncoderDeployment.options(
            name=f"shared-encoder-{i}",
            autoscaling_config=autoscaling,
            ray_actor_options=actor,
            max_ongoing_requests=ongoing,
            user_config={"refresh_token": cfg.refresh_token},
            health_check_period_s=cfg.health_check_period_s,
        ).bind(cfg.registry, g, refresh_s=cfg.refresh_s, **batch)
        for t in g:
            routes[t] = h
            shared.append(t)
    fill = gen = None
    if cfg.fill_mask_model:
        fill = FillMaskDeployment.options(
            autoscaling_config=autoscaling, ray_actor_options=actor, max_ongoing_requests=ongoing
        ).bind(cfg.registry, cfg.fill_mask_model, **batch)
    if cfg.generate_model:
        gen = GenerateDeployment.options(
            autoscaling_config=autoscaling, ray_actor_options=actor
        ).bind(cfg.registry, cfg.generate_model)
    limits = {
        k: getattr(cfg, k) for k in ("max_queued_requests", "request_timeout_s", "retry_after_s")
    }
    return Ingress.options(
        autoscaling_config=autoscaling,
        ray_actor_options={"num_cpus": cfg.ingress_cpus},
        # Serve hands the ingress more than it admits: the bound is ours, with our envelope
        max_ongoing_requests=cfg.max_queued_requests + 64,
    ).bind(
        routes,
        shared,
        fill,
        gen,
        cfg.max_inputs,
        cfg.max_body_bytes,
        cfg.auth.model_dump(),
        cfg.cors_origins,
        limits,
    )


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
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    deadline = time.time() + wait_s
    while True:
        st = serve.status().applications.get(cfg.app_name)
        if st is not None and st.status == "RUNNING":
            return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
        if st is not None and st.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"application {cfg.app_name} {st.status}: {st.message}")
        if time.time() > deadline:
            raise RuntimeError(f"application {cfg.app_name} not RUNNING after {wait_s:.0f}s")
        time.sleep(1)
