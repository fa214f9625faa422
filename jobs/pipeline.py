"""Run the whole path as one resumable job (tokenizer, pretraining, searches, promotion, deployment).

The same as the `lmplatform-pipeline` console script: usage in lmplatform/commands/pipeline.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.pipeline import run  # noqa: E402

if __name__ == "__main__":
    run()
