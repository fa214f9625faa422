"""Fault injection for training runs, passed in as step callbacks (production code has none)."""

from __future__ import annotations

import os


class KillOnce:
    """SIGKILL the worker that reaches `step` first, once across restarts: the marker file is
    created with O_EXCL, so exactly one worker of one attempt dies."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def __call__(self, step: int, metrics: dict) -> None:
        if step != self.step:
            return
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), 9)


def picklable_by_value() -> None:
    """Ray workers need not have tests/ on their path: ship this module inside the pickle."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
