"""Deploy the Serve application (every promoted task; fill-mask / generate if configured).

python jobs/deploy.py --config serve/config.yaml [key=value ...] [--refresh] [--wait-s 300]
ray job submit --working-dir . -- python jobs/deploy.py --config serve/config.yaml registry=s3://...

The config is Ray Serve's own file (its first application's `args` and `http_options`) or a
plain ServeConfig YAML; overrides apply to the args. The job returns once the application is
RUNNING; Serve keeps it up after the job ends. `--refresh` makes running replicas check the
registry for new `best` versions now (hot swap) instead of at their next poll.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform import cli  # noqa: E402
from lmplatform.config import ConfigError, apply_overrides, read_yaml, validate  # noqa: E402
from lmplatform.jobconfig import ServeConfig  # noqa: E402


def load(path: str, overrides: list[str]) -> ServeConfig:
    raw = read_yaml(path)
    if "applications" in raw:  # Ray Serve's config file
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
    return validate(ServeConfig, apply_overrides(raw, overrides))


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="serve/config.yaml or a ServeConfig YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--refresh", action="store_true", help="replicas re-check the registry now")
    p.add_argument("--wait-s", type=float, default=600, help="give up if not RUNNING by then")
    args = p.parse_args()
    cfg = load(args.config, args.overrides)
    from lmplatform.serving.deployments import serve_tasks

    tasks = serve_tasks(cfg)  # registry problems fail here, before anything is deployed
    if args.refresh:
        cfg = cfg.model_copy(update={"refresh_token": f"{time.time():.6f}"})
    from lmplatform.runtime import init_ray
    from lmplatform.serving.deployments import build

    init_ray()
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    app = build(cfg)
    t0 = time.time()
    serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    deadline = t0 + args.wait_s
    while True:
        st = serve.status().applications.get(cfg.app_name)
        if st is not None and st.status == "RUNNING":
            break
        if st is not None and st.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise SystemExit(f"error: application {cfg.app_name} {st.status}: {st.message}")
        if time.time() > deadline:
            raise SystemExit(
                f"error: application {cfg.app_name} not RUNNING after {args.wait_s:.0f}s"
            )
        time.sleep(1)
    base = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    print(
        f"serving {len(tasks)} task(s) at {base} in {time.time() - t0:.1f}s: {', '.join(tasks) or 'none'}"
    )
    for t in tasks:
        print(f"  POST {base}/v1/predict/{t}")
    if cfg.fill_mask_model:
        print(f"  POST {base}/v1/fill-mask ({cfg.fill_mask_model})")
    if cfg.generate_model:
        print(f"  POST {base}/v1/generate ({cfg.generate_model})")
    print(f"  GET  {base}/v1/tasks   GET {base}/healthz   docs: {base}/docs")


if __name__ == "__main__":
    cli.run(main)
