"""Check what makes Ray jobs fail late, before submitting: one line per problem, with the fix.

python jobs/preflight.py --config jobs/configs/pipeline/demo.yaml [key=value ...]
    [--working-dir .] [--address http://127.0.0.1:8265]

The config may be a pipeline, pretraining, fine-tuning or Serve config. Cluster checks
(storage from every node, GPUs, DeepSpeed importable) run on the cluster in RAY_ADDRESS, or on
a local Ray. Exit code 2 when there is a problem.
"""

import argparse
import os
import sys
from pathlib import Path

from lmplatform import cli

ROOT = Path.cwd()  # the working dir `ray job submit` uploads: the repository root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--working-dir", default=str(ROOT), help="what ray job submit would upload")
    p.add_argument("--runtime-env", default=str(ROOT / "jobs" / "runtime_env.yaml"))
    p.add_argument("--address", default=os.environ.get("RAY_JOB_ADDRESS"), help="dashboard URL")
    args = p.parse_args()

    from lmplatform import preflight
    from lmplatform.config import load_config, read_yaml
    from lmplatform.jobconfig import FinetuneJobConfig, PretrainJobConfig

    raw = read_yaml(args.config)
    pre, tasks, serve_cfg, storage = None, [], None, {}
    if "pretrain" in raw:
        from lmplatform.pipeline import PipelineConfig, resolve

        cfg = load_config(PipelineConfig, args.config, args.overrides)
        pre, tasks, serve_cfg = resolve(cfg)
        storage = {"registry": cfg.registry, "output_dir": cfg.output_dir}
    elif "corpus" in raw:
        pre = load_config(PretrainJobConfig, args.config, args.overrides)
        storage = {"registry": pre.registry, "output_dir": pre.output_dir}
    elif "task" in raw:
        f = load_config(FinetuneJobConfig, args.config, args.overrides)
        tasks = [f]
        storage = {"registry": f.registry, "output_dir": f.output_dir}
    else:
        from lmplatform.serving.deployments import read_serve_config

        serve_cfg = read_serve_config(args.config, args.overrides)
        storage = {"registry": serve_cfg.registry}
    from lmplatform.runtime import init_ray

    init_ray(quiet=True)
    problems = preflight.run_checks(
        working_dir=args.working_dir,
        excludes=preflight.runtime_env_excludes(args.runtime_env),
        storage=storage,
        data=preflight.data_wants(pre, tasks),
        gpus=preflight.gpu_wants(pre, tasks, serve_cfg),
        serve=serve_cfg,
        address=args.address,
        pretraining=pre is not None,
    )
    for prob in problems:
        print(f"preflight: {prob}")
    if problems:
        sys.exit(2)
    print("preflight: ok")


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
