"""The Serve application graph: which tasks a config serves, one application per task (or one
shared-encoder group) behind the HTTP ingress, the resources they need, deploy / delete, and the
serve config reader."""

from __future__ import annotations

import time

import ray
from ray import serve

from lmplatform.registry.store import Registry
from lmplatform.serving.config import ServeConfig
from lmplatform.serving.deployments import (
    AdapterGroupDeployment,
    FillMaskDeployment,
    GenerateDeployment,
    SharedEncoderDeployment,
    TaskDeployment,
    TaskIngress,
)
from lmplatform.serving.ingress import Ingress
from lmplatform.serving.security import exposure_problem


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
    grouped = cfg.grouped()
    models = len([t for t in tasks if t not in grouped]) + len(cfg.groups())
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
            quantize=cfg.quantize_of(task),
            http=http,
            **_batching(cfg),
        )
    )


def _one_hop_tasks(cfg: ServeConfig, tasks: list[str]) -> list[str]:
    grouped = cfg.grouped()
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


def _group_deployments(cfg: ServeConfig) -> list[tuple[list[str], serve.Application]]:
    """(tasks, deployment) of every group: shared encoders, then adapter groups."""
    groups = [
        (SharedEncoderDeployment, f"shared-encoder-{i}", g)
        for i, g in enumerate(cfg.shared_encoder_groups)
    ]
    groups += [
        (AdapterGroupDeployment, f"adapters-{i}", g) for i, g in enumerate(cfg.adapter_groups)
    ]
    return [
        (
            g,
            deployment.options(
                name=name,
                max_ongoing_requests=max(4 * cfg.max_batch_size, 32),
                user_config={"refresh_token": cfg.refresh_token},
                health_check_period_s=cfg.health_check_period_s,
                **_options(cfg),
            ).bind(cfg.registry, g, refresh_s=cfg.refresh_s, **_batching(cfg)),
        )
        for deployment, name, g in groups
    ]


def build(cfg: ServeConfig) -> serve.Application:
    """The main application (the ingress: /v1/tasks, /healthz, fill-mask, generate, and the
    tasks that have no application of their own) for a validated config."""
    check_bind(cfg, serve_bind_host())
    tasks = serve_tasks(cfg)
    grouped = cfg.grouped()
    unknown = grouped - set(tasks)
    if unknown:
        raise ValueError(
            f"shared_encoder_groups / adapter_groups name tasks that are not served: "
            f"{sorted(unknown)}"
        )
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
    for g, h in _group_deployments(cfg):
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
