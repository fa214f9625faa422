"""Search fine-tuning hyperparameters for a task with Ray Tune and promote the best model.

python jobs/finetune.py --config jobs/configs/tasks/sentiment-sample.yaml [--force] [key=value ...]
ray job submit --working-dir . -- python jobs/finetune.py --config jobs/configs/tasks/sst2.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.finetune import run  # noqa: E402

if __name__ == "__main__":
    run()
