"""The Ray Serve application: every promoted task behind one HTTP API (see README "HTTP API").

Typed app builder for Ray's own CLI and for jobs/deploy.py:

    serve run serve/config.yaml          # foreground, local
    serve deploy serve/config.yaml       # onto a running cluster (RAY_ADDRESS / dashboard)
    python jobs/deploy.py --config serve/config.yaml registry=/abs/registry

Serve validates the config's `args` against `ServeConfig` (unknown or mistyped keys fail the
deploy with the field named); the deployments live in `lmplatform.serving.deployments`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # run without install too

from ray.serve import Application  # noqa: E402

from lmplatform.jobconfig import ServeConfig  # noqa: E402
from lmplatform.serving.deployments import build  # noqa: E402


def build_app(args: ServeConfig) -> Application:
    """Serve passes the config's `args` here, already validated as a ServeConfig."""
    return build(args)
