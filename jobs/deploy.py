"""Deploy the Serve application (every promoted task; fill-mask / generate if configured).

The same as the `lmplatform-deploy` console script: usage in lmplatform/commands/deploy.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.deploy import run  # noqa: E402

if __name__ == "__main__":
    run()
