"""Pretrain a model family on a corpus with Ray Train + DeepSpeed and register the result.

python jobs/pretrain.py --config jobs/configs/pretrain/bert-debug.yaml [key=value ...]
ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/pretrain.py --config jobs/configs/pretrain/bert-debug.yaml
"""

from lmplatform.cli import common as cli
from lmplatform.pretraining.config import PretrainJobConfig


def main() -> None:
    cfg, _ = cli.parse(PretrainJobConfig, __doc__.splitlines()[0])
    from lmplatform.pretraining.run import export_and_register, run_pretraining
    from lmplatform.runtime import init_ray

    init_ray()
    prepared, result = run_pretraining(cfg)
    name, version, path = export_and_register(cfg, prepared, result)
    print(f"registered pretrained/{name}@{version} -> {path}")


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
