"""Deploy the Serve application (every promoted task; fill-mask / generate if configured).

python jobs/deploy.py --config serve/config.yaml [key=value ...] [--refresh] [--wait-s 300]
ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/deploy.py --config serve/config.yaml registry=s3://...

The config is Ray Serve's own file (its first application's `args` and `http_options`) or a
plain ServeConfig YAML; overrides apply to the args. The job returns once the application is
RUNNING; Serve keeps it up after the job ends. `--refresh` makes running replicas check the
registry for new `best` versions now (hot swap) instead of at their next poll.
"""

import time

from lmplatform.cli import common as cli


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="serve/config.yaml or a ServeConfig YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--refresh", action="store_true", help="replicas re-check the registry now")
    p.add_argument("--wait-s", type=float, default=600, help="give up if not RUNNING by then")
    args = p.parse_args()
    from lmplatform.serving.graph import read_serve_config, serve_tasks

    cfg = read_serve_config(args.config, args.overrides)

    tasks = serve_tasks(cfg)  # registry problems fail here, before anything is deployed
    if args.refresh:
        cfg = cfg.model_copy(update={"refresh_token": f"{time.time():.6f}"})
    from lmplatform.runtime import init_ray
    from lmplatform.serving.graph import run_app

    init_ray()
    t0 = time.time()
    try:
        base = run_app(cfg, args.wait_s)
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from None
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


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
