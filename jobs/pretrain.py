"""Pretrain a model family on a corpus with Ray Train + DeepSpeed and register the result.

python jobs/pretrain.py --config jobs/configs/pretrain/bert-debug.yaml [key=value ...]
ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/pretrain/bert-debug.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform import cli  # noqa: E402
from lmplatform.jobconfig import PretrainJobConfig  # noqa: E402


def main() -> None:
    cfg, _ = cli.parse(PretrainJobConfig, __doc__.splitlines()[0])
    from lmplatform.pretrain import export_and_register, run_pretraining
    from lmplatform.runtime import init_ray

    init_ray()
    prepared, result = run_pretraining(cfg)
    name, version, path = export_and_register(cfg, prepared, result)
    print(f"registered pretrained/{name}@{version} -> {path}")


if __name__ == "__main__":
    cli.run(main)
