"""Export a pretraining checkpoint (any ZeRO stage, merged to fp32) into the model registry.

The same as the `lmplatform-export` console script: usage in lmplatform/commands/export.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.export import run  # noqa: E402

if __name__ == "__main__":
    run()
