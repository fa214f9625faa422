"""Check what makes Ray jobs fail late, before submitting: one line per problem, with the fix.

python jobs/preflight.py --config jobs/configs/pipeline/demo.yaml [key=value ...]
    [--working-dir .] [--address http://127.0.0.1:8265] [--gpu-timeout 900]

The config may be a pipeline, pretraining, fine-tuning or Serve config. With --address (a
cluster's dashboard, e.g. forwarded by `ray dashboard cluster.yaml`) the upload and the token
are checked here and every other check runs on that cluster: this script runs there as a Ray
job (--on-cluster), shipped as `ray job submit --working-dir --runtime-env` ships a job, and
its output and exit code are this one's. Without it, the cluster checks run on the cluster in
RAY_ADDRESS, or on a local Ray. A GPU check may wait --gpu-timeout seconds for the autoscaler
to start a GPU node. Exit code 2 when there is a problem.
"""

import argparse
import os
import sys
from pathlib import Path

from lmplatform.cli import common as cli

ROOT = Path.cwd()  # the working dir `ray job submit` uploads: the repository root


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--working-dir", default=str(ROOT), help="what ray job submit would upload")
    p.add_argument("--runtime-env", default=str(ROOT / "jobs" / "runtime_env.yaml"))
    p.add_argument("--address", default=os.environ.get("RAY_JOB_ADDRESS"), help="dashboard URL")
    p.add_argument(
        "--gpu-timeout", type=float, default=900.0, help="seconds to wait for a GPU node"
    )
    p.add_argument("--on-cluster", action="store_true", help="(set by the job --address submits)")
    return p


def _load(args):
    """(pretraining, fine-tunings, serve config, storage roots, task-adaptive pretrainings) of
    any kind of config."""
    from lmplatform.config import load_config, read_yaml
    from lmplatform.pretraining.config import PretrainJobConfig
    from lmplatform.tune.config import FinetuneJobConfig

    raw = read_yaml(args.config)
    if "pretrain" in raw:
        from lmplatform.pipeline.config import PipelineConfig
        from lmplatform.pipeline.run import resolve, resolve_adapts

        cfg = load_config(PipelineConfig, args.config, args.overrides)
        pre, tasks, serve_cfg = resolve(cfg)
        roots = {"registry": cfg.registry.uri, "output_dir": cfg.output_dir}
        return pre, tasks, serve_cfg, roots, list(resolve_adapts(cfg, pre, tasks).values())
    if "corpus" in raw:
        pre = load_config(PretrainJobConfig, args.config, args.overrides)
        return pre, [], None, {"registry": pre.registry.uri, "output_dir": pre.output_dir}, []
    if "task" in raw:
        f = load_config(FinetuneJobConfig, args.config, args.overrides)
        return None, [f], None, {"registry": f.registry.uri, "output_dir": f.output_dir}, []
    from lmplatform.serving.graph import read_serve_config

    serve_cfg = read_serve_config(args.config, args.overrides)
    return None, [], serve_cfg, {"registry": serve_cfg.registry}, []


def _submit(args) -> int:
    """The upload and the token checked here, everything else on the cluster, as a job."""
    from lmplatform.pipeline import preflight

    _load(args)  # a config error is found here, before anything is uploaded
    problems = preflight.check_working_dir(
        args.working_dir, preflight.runtime_env_excludes(args.runtime_env)
    ) + preflight.check_auth(args.address)
    config = Path(os.path.relpath(Path(args.config).resolve(), Path(args.working_dir).resolve()))
    if config.parts[:1] == ("..",):
        problems.append(
            preflight.Problem(
                "config",
                f"{args.config} is outside the working dir {args.working_dir}: the job cannot read it",
                "put the config inside the working dir (jobs/configs/...)",
            )
        )
    if problems:
        return _report(problems)
    argv = [
        "--config",
        config.as_posix(),
        *args.overrides,
        "--gpu-timeout",
        f"{args.gpu_timeout:g}",
    ]
    # the job also waits for its runtime env and the non-GPU checks: 10 minutes for those
    return preflight.run_on_cluster(
        args.address, argv, args.working_dir, args.runtime_env, args.gpu_timeout + 600
    )


def _report(problems) -> int:
    for prob in problems:
        print(f"preflight: {prob}")
    if problems:
        return 2
    print("preflight: ok")
    return 0


def main(args) -> None:
    if (args.address or "").startswith(("http://", "https://")) and not args.on_cluster:
        sys.exit(_submit(args))
    from lmplatform.pipeline import preflight

    pre, tasks, serve_cfg, storage, adapts = _load(args)
    from lmplatform.runtime import init_ray

    init_ray(quiet=True)
    problems = preflight.run_checks(
        working_dir=None if args.on_cluster else args.working_dir,  # the job's was checked
        excludes=preflight.runtime_env_excludes(args.runtime_env),
        storage=storage,
        data=preflight.data_wants(pre, tasks),
        gpus=preflight.gpu_wants(serve=serve_cfg),  # the training stages': their workers'
        workers=preflight.worker_wants(pre, tasks, adapts),
        gpu_timeout_s=args.gpu_timeout,
        serve=serve_cfg,
        address=None if args.on_cluster else args.address,
        pretraining=pre is not None,
        finetunes=tasks,
    )
    print(f"preflight: checked on {preflight.cluster_summary()}", flush=True)
    sys.exit(_report(problems))


def run() -> None:
    args = _parser().parse_args()
    if args.address and not args.on_cluster:
        # this process is that cluster's client: Ray's settings for joining one (its token
        # when there is one), never a token made up for a local Ray the cluster would refuse
        os.environ["RAY_ADDRESS"] = args.address
    cli.run(lambda: main(args))


if __name__ == "__main__":
    run()
