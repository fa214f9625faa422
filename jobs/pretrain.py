"""Pretrain a model family on a corpus with Ray Train + DeepSpeed and register the result.

The same as the `lmplatform-pretrain` console script: usage in lmplatform/commands/pretrain.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.pretrain import run  # noqa: E402

if __name__ == "__main__":
    run()
