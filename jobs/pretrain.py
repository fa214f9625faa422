"""Pretrain a model family on a corpus with Ray Train + DeepSpeed and register the result.

The same as the `lmplatform-pretrain` console script: usage in lmplatform/cli/pretrain.py.
"""

from lmplatform.cli.pretrain import run

if __name__ == "__main__":
    run()
