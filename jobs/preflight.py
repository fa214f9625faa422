"""Check what makes Ray jobs fail late, before submitting: one line per problem, with the fix.

The same as the `lmplatform-preflight` console script: usage in lmplatform/commands/preflight.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.commands.preflight import run  # noqa: E402

if __name__ == "__main__":
    run()
