"""Look after a model registry: list, show, export --hf, promote, rollback, gc.

python jobs/registry.py --registry registry list
python jobs/registry.py --registry s3://bucket/registry show sst2@best
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.registry import main  # noqa: E402

if __name__ == "__main__":
    main()
