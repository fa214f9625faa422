"""The Ray Serve application builder, importable wherever the package is installed:

    serve deploy serve/config.yaml                       # import_path lmplatform.serving.app:build_app
    serve run lmplatform.serving.app:build_app registry=s3://bucket/registry
    python jobs/deploy.py --config serve/config.yaml registry=s3://bucket/registry

Serve validates the config's `args` against `ServeConfig` (unknown or mistyped keys fail the
deploy with the field named). `LMPLATFORM_REGISTRY`, when set where the application is built
(the cluster's nodes), overrides `registry` without editing the YAML.
"""

from __future__ import annotations

import os

from ray.serve import Application

from lmplatform.serving.config import ServeConfig
from lmplatform.serving.graph import build

REGISTRY_ENV = "LMPLATFORM_REGISTRY"


def build_app(args: ServeConfig) -> Application:
    """Serve passes the config's `args` here, already validated as a ServeConfig."""
    if os.environ.get(REGISTRY_ENV):
        args = ServeConfig.model_validate(
            {**args.model_dump(), "registry": os.environ[REGISTRY_ENV]}
        )
    return build(args)
