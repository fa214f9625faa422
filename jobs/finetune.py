"""Search fine-tuning hyperparameters for a task with Ray Tune and promote the best model.

The same as the `lmplatform-finetune` console script: usage in lmplatform/commands/finetune.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.finetune import run  # noqa: E402

if __name__ == "__main__":
    run()
