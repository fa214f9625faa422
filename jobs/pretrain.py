"""Pretrain a model family on a corpus with Ray Train + DeepSpeed and register the result.

python jobs/pretrain.py --config jobs/configs/pretrain/bert-debug.yaml [key=value ...]
ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/pretrain/bert-debug.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.pretrain import run  # noqa: E402

if __name__ == "__main__":
    run()
