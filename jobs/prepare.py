"""Prepare pretraining data: train (or reuse) the tokenizer and build example shards with Ray Data.

The same as the `lmplatform-prepare` console script: usage in lmplatform/cli/prepare.py.
"""

from lmplatform.cli.prepare import run

if __name__ == "__main__":
    run()
