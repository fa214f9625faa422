"""Export a pretraining checkpoint (any ZeRO stage, merged to fp32) into the model registry.

python jobs/export.py --config jobs/configs/pretrain/bert-debug.yaml --checkpoint runs/ray/bert-debug/checkpoint_…
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform import cli  # noqa: E402
from lmplatform.jobconfig import PretrainJobConfig  # noqa: E402


def main() -> None:
    cfg, args = cli.parse(
        PretrainJobConfig,
        __doc__.splitlines()[0],
        extra=lambda p: p.add_argument(
            "--checkpoint", required=True, help="a checkpoint folder of the run"
        ),
    )
    from lmplatform.prepare import prepare
    from lmplatform.pretrain import export_checkpoint
    from lmplatform.runtime import init_ray

    init_ray(quiet=True)
    prepared = prepare(cfg)  # reuses the run's tokenizer and shards (same config)
    name, version, path = export_checkpoint(cfg, prepared, args.checkpoint)
    print(f"registered pretrained/{name}@{version} from {args.checkpoint} -> {path}")


if __name__ == "__main__":
    cli.run(main)
