"""Search fine-tuning hyperparameters for a task with Ray Tune and promote the best model.

The same as the `lmplatform-finetune` console script: usage in lmplatform/cli/finetune.py.
"""

from lmplatform.cli.finetune import run

if __name__ == "__main__":
    run()
