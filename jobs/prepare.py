"""Prepare pretraining data: train (or reuse) the tokenizer and build example shards with Ray Data.

python jobs/prepare.py --config jobs/configs/pretrain/bert-sample.yaml [key=value ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform import cli  # noqa: E402
from lmplatform.jobconfig import PretrainJobConfig  # noqa: E402


def main() -> None:
    cfg, _ = cli.parse(PretrainJobConfig, __doc__.splitlines()[0])
    from lmplatform.prepare import prepare
    from lmplatform.runtime import init_ray

    init_ray()
    out = prepare(cfg)
    print(f"tokenizer {out.tokenizer_uri} [{out.tokenizer_hash}], examples {out.examples_dir}")


if __name__ == "__main__":
    cli.run(main)
