"""Check what makes Ray jobs fail late, before submitting: one line per problem, with the fix.

python jobs/preflight.py --config jobs/configs/pipeline/demo.yaml [key=value ...]
    [--working-dir .] [--address http://127.0.0.1:8265]

The config may be a pipeline, pretraining, fine-tuning or Serve config. Cluster checks
(storage from every node, GPUs, DeepSpeed importable) run on the cluster in RAY_ADDRESS, or on
a local Ray. Exit code 2 when there is a problem.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.preflight import run  # noqa: E402

if __name__ == "__main__":
    run()
