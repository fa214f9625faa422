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


class WorsenEval:
    """Make the eval_loss reported at `step` (not the one early stopping reads) much worse:
    the registered checkpoint must then be an earlier one."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, step: int, metrics: dict) -> None:
        if step == self.step and "eval_loss" in metrics:
            metrics["eval_loss"] += 10.0


class HoldUntilGrown:
    """From `step` on, while the run has one worker, wait (up to `seconds`) instead of training:
    the elastic resize then always comes mid-run, however fast the CPU trains the steps left
    (the resize restarts the worker group, which ends this wait)."""

    def __init__(self, step: int, seconds: float):
        self.step, self.seconds, self.held = step, seconds, False

    def __call__(self, step: int, metrics: dict) -> None:
        import time

        import ray.train

        if self.held or step < self.step or ray.train.get_context().get_world_size() > 1:
            return
        self.held = True  # once: a resize that never comes fails the test, not its timeout
        deadline = time.time() + self.seconds
        while time.time() < deadline:
            time.sleep(0.5)


def picklable_by_value() -> None:
    """Ray workers need not have tests/ on their path: ship this module inside the pickle."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
