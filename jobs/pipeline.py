"""Run the whole path as one resumable job: tokenizer, pretraining, fine-tuning searches,
promotion, deployment, run report.

python jobs/pipeline.py --config jobs/configs/pipeline/demo.yaml [--force] [key=value ...]
ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- \
    python jobs/pipeline.py --config jobs/configs/pipeline/demo.yaml output_dir=$PWD/runs registry=$PWD/registry

A stage whose output exists for the same config is skipped (state.json under
output_dir/<name>/); preflight checks run first and stop the job with one line per problem.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.pipeline import run  # noqa: E402

if __name__ == "__main__":
    run()
