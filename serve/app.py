"""Kept for `serve run serve.app:build_app` from a source checkout; the builder lives in the
installed package (`lmplatform.serving.app:build_app`, what serve/config.yaml names), so that
`serve deploy` works on any cluster whose nodes have the package installed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from lmplatform.serving.app import build_app  # noqa: E402,F401
