"""Run the whole path as one resumable job (tokenizer, pretraining, searches, promotion, deployment).

The same as the `lmplatform-pipeline` console script: usage in lmplatform/cli/pipeline.py.
"""

from lmplatform.cli.pipeline import run

if __name__ == "__main__":
    run()
