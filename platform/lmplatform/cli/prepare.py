"""Prepare pretraining data: train (or reuse) the tokenizer and build example shards with Ray Data.

python jobs/prepare.py --config jobs/configs/pretrain/bert-sample.yaml [key=value ...]
"""

from lmplatform.cli import common as cli
from lmplatform.pretraining.config import PretrainJobConfig


def main() -> None:
    cfg, _ = cli.parse(PretrainJobConfig, __doc__.splitlines()[0])
    from lmplatform.pretraining.prepare import prepare
    from lmplatform.runtime import init_ray

    init_ray()
    out = prepare(cfg)
    print(f"tokenizer {out.tokenizer_uri} [{out.tokenizer_hash}], examples {out.examples_dir}")


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
