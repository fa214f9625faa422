"""What every job script shares: `--config FILE key=value…` parsing and clean failure messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from lmplatform.config import ConfigError, load_config
from lmplatform.data.sources import DataError
from lmplatform.registry.store import RegistryError

C = TypeVar("C", bound=BaseModel)


def parse(
    cls: type[C], description: str, argv: list[str] | None = None, extra: Callable | None = None
):
    """Parse `--config FILE [key=value …]` into a validated `cls`; returns (config, args)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML file (see jobs/configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.hidden_size=256")
    if extra:
        extra(p)
    args = p.parse_args(argv)
    return load_config(cls, args.config, args.overrides), args


def run(main: Callable[[], object]) -> None:
    """Run a job's main; a config or data problem is one line on stderr and exit code 2."""
    from lmplatform.runtime import setup_process

    setup_process()  # before main imports Ray or datasets, which read it on import
    try:
        main()
    except (ConfigError, DataError, RegistryError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# what builds each registry model the shipped configs start from (one command each)
BUILDS = {
    "bert-sample": "make demo   (or: .venv/bin/python jobs/pretrain.py --config "
    "jobs/configs/pretrain/bert-sample.yaml registry=REGISTRY)",
    "bert-shared-cpu": ".venv/bin/python jobs/pipeline.py --config "
    "jobs/configs/pipeline/shared-cpu.yaml registry=REGISTRY output_dir=$PWD/runs",
}


def require_model(registry, kind: str, ref: str, builder: str | None = None) -> None:
    """Exit 2 with the one command that builds it when `ref` is not in the registry: a bench
    script on a fresh checkout says what to run instead of failing deep inside a search."""
    from lmplatform.registry.store import Registry, RegistryError

    registry = Registry(registry)  # a root as written, or an opened one
    try:
        registry.resolve(kind, ref.removeprefix("random:"))  # random weights: its architecture
    except RegistryError as e:
        name = (builder or ref).removeprefix("random:").partition("@")[0]
        how = BUILDS.get(name, f"publish {kind}/{name} to {registry.uri} first").replace(
            "REGISTRY", registry.written
        )
        print(f"error: {e}\nbuild it with:\n  {how}", file=sys.stderr)
        sys.exit(2)
