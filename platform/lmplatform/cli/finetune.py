"""Search fine-tuning hyperparameters for a task with Ray Tune and promote the best model.

python jobs/finetune.py --config jobs/configs/tasks/sentiment-sample.yaml [--force] [key=value ...]
ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/finetune.py --config jobs/configs/tasks/sst2.yaml
"""

from lmplatform.cli import common as cli
from lmplatform.tune.config import FinetuneJobConfig


def main() -> None:
    cfg, args = cli.parse(
        FinetuneJobConfig,
        __doc__.splitlines()[0],
        extra=lambda p: p.add_argument(
            "--force", action="store_true", help="promote even if it does not beat the current best"
        ),
    )
    from lmplatform.config import save_resolved
    from lmplatform.runtime import init_ray
    from lmplatform.tune.data import load_task_data
    from lmplatform.tune.promotion import describe_baseline, promote
    from lmplatform.tune.search import format_table, run_search
    from lmplatform.tune.space import check_scheduler

    data = load_task_data(cfg)  # parent model and data problems fail here, before Ray starts
    check_scheduler(cfg, len(data.train_rows))  # so does a schedule the budget cannot hold
    init_ray()
    sr = run_search(cfg, data)
    save_resolved(cfg, sr.run_dir)
    print(format_table(sr.table, cfg.task.metric))
    print(
        f"trials: {sr.run_dir}/trials.csv  plot: {sr.run_dir}/trials.png  "
        f"data: {sr.run_dir}/data_report.json"
    )
    out = promote(sr, force=args.force)
    verdict = (
        "promoted to best"
        if out["promoted"]
        else f"kept best {out['previous']['version']} ({out['previous']['value']:.4f})"
    )
    print(
        f"registered tasks/{out['task']}@{out['version']}: dev {out['metric']} {out['value']:.4f} — {verdict}; "
        + describe_baseline(out["baseline"])
    )


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
