"""Export a pretraining checkpoint (any ZeRO stage, merged to fp32) into the model registry.

The same as the `lmplatform-export` console script: usage in lmplatform/cli/export.py.
"""

from lmplatform.cli.export import run

if __name__ == "__main__":
    run()
