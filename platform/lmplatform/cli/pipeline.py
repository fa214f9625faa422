"""Run the whole path as one resumable job: tokenizer, pretraining, fine-tuning searches,
promotion, deployment, run report.

python jobs/pipeline.py --config jobs/configs/pipeline/demo.yaml [--force] [key=value ...]
ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
    python jobs/pipeline.py --config jobs/configs/pipeline/demo.yaml output_dir=$PWD/runs registry=$PWD/registry

A stage whose output exists for the same config is skipped (state.json under
output_dir/<name>/); preflight checks run first and stop the job with one line per problem.
"""

import sys
from pathlib import Path

from lmplatform.cli import common as cli
from lmplatform.pipeline.config import PipelineConfig

ROOT = Path.cwd()  # the working dir `ray job submit` uploads: the repository root


def main() -> None:
    cfg, args = cli.parse(
        PipelineConfig,
        __doc__.splitlines()[0],
        extra=lambda p: (
            p.add_argument("--force", action="store_true", help="re-run every stage"),
            p.add_argument("--no-preflight", action="store_true", help="skip the preflight checks"),
        ),
    )
    from lmplatform.pipeline import preflight, report
    from lmplatform.pipeline import run as pipeline
    from lmplatform.runtime import init_ray

    pre, tasks, serve_cfg = pipeline.resolve(cfg)  # every stage's config, validated up front
    adapts = pipeline.resolve_adapts(cfg, pre, tasks)
    init_ray()
    if not args.no_preflight:
        problems = preflight.run_checks(
            working_dir=ROOT,
            excludes=preflight.runtime_env_excludes(ROOT / "jobs" / "runtime_env.yaml"),
            storage={"registry": cfg.registry.uri, "output_dir": cfg.output_dir},
            data=preflight.data_wants(pre, tasks),
            gpus=preflight.gpu_wants(serve=serve_cfg),  # the training stages': their workers'
            # fit on the node types, GPU probes
            workers=preflight.worker_wants(pre, tasks, adapts.values()),
            serve=serve_cfg,
            finetunes=tasks,
        )
        if problems:
            for p in problems:
                print(f"preflight: {p}", file=sys.stderr)
            sys.exit(2)
        print("[pipeline] preflight: ok", flush=True)
    state = pipeline.run(cfg, force=args.force)
    answers = {}
    if "deploy" in state and cfg.examples:
        answers = pipeline.try_examples(cfg, state["deploy"]["url"])
        for task, a in answers.items():
            for inp, pred in zip(cfg.examples[task], a["predictions"]):
                short = {k: v for k, v in pred.items() if k in ("label", "score", "entities")}
                print(f"[pipeline] example {task}: {inp!r} -> {short}", flush=True)
    report_path = report.write_report(cfg, state, answers)
    print(f"[pipeline] report: {report_path}", flush=True)
    if "deploy" in state:
        print(
            f"[pipeline] endpoints: {state['deploy']['url']} (GET /v1/tasks, POST /v1/predict/<task>)"
        )


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
