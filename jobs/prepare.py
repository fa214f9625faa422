"""Prepare pretraining data: train (or reuse) the tokenizer and build example shards with Ray Data.

The same as the `lmplatform-prepare` console script: usage in lmplatform/commands/prepare.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.prepare import run  # noqa: E402

if __name__ == "__main__":
    run()
