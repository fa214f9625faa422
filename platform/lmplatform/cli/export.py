"""Export a pretraining checkpoint (any ZeRO stage, merged to fp32) into the model registry.

python jobs/export.py --config jobs/configs/pretrain/bert-debug.yaml --checkpoint runs/ray/bert-debug/checkpoint_…
"""

from lmplatform.cli import common as cli
from lmplatform.pretraining.config import PretrainJobConfig


def main() -> None:
    cfg, args = cli.parse(
        PretrainJobConfig,
        __doc__.splitlines()[0],
        extra=lambda p: p.add_argument(
            "--checkpoint", required=True, help="a checkpoint folder of the run"
        ),
    )
    from lmplatform.pretraining.prepare import prepare
    from lmplatform.pretraining.run import export_checkpoint
    from lmplatform.runtime import init_ray

    init_ray(quiet=True)
    prepared = prepare(cfg)  # reuses the run's tokenizer and shards (same config)
    name, version, path = export_checkpoint(cfg, prepared, args.checkpoint)
    print(f"registered pretrained/{name}@{version} from {args.checkpoint} -> {path}")


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
