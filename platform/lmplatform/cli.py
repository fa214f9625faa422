"""What every job script shares: `--config FILE key=value…` parsing and clean failure messages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from lmplatform.config import ConfigError, load_config
from lmplatform.data.sources import DataError
from lmplatform.registry import RegistryError

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
    try:
        main()
    except (ConfigError, DataError, RegistryError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
