"""Deploy the Serve application (every promoted task; fill-mask / generate if configured).

python jobs/deploy.py --config serve/config.yaml [key=value ...] [--refresh] [--wait-s 300]
ray job submit --working-dir . -- python jobs/deploy.py --config serve/config.yaml registry=s3://...

The config is Ray Serve's own file (its first application's `args` and `http_options`) or a
plain ServeConfig YAML; overrides apply to the args. The job returns once the application is
RUNNING; Serve keeps it up after the job ends. `--refresh` makes running replicas check the
registry for new `best` versions now (hot swap) instead of at their next poll.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.deploy import run  # noqa: E402

if __name__ == "__main__":
    run()
