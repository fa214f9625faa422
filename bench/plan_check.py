"""Runs a bench script up to its argument parsing and stops there: `bench/gpu_check.sh
--dry-run` checks with it, on a CPU, that every part of its plan names a script that imports
here and takes the arguments the plan gives it (a typo in a flag is found before minutes of
GPU time are spent).

    python3 bench/plan_check.py bench/<script>.py [its arguments ...]

Prints `ok <script> <parsed arguments>`; exits 2 (argparse's error) when they do not parse.
"""

from __future__ import annotations

import argparse
import runpy
import sys

_parse = argparse.ArgumentParser.parse_args


def _parse_and_stop(self, args=None, namespace=None):
    parsed = _parse(self, args, namespace)
    print(f"ok {sys.argv[0]} {vars(parsed)}", flush=True)
    raise SystemExit(0)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    argparse.ArgumentParser.parse_args = _parse_and_stop
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    sys.exit(f"{sys.argv[0]}: never parsed its arguments")


if __name__ == "__main__":
    main()
