"""What a job's console shows: our progress lines, once each, with every warning and error, and
without the libraries' per-step chatter (Ray Train's per-report and per-checkpoint lines, Ray
Data's and datasets' progress bars, Ray Data's per-dataset status blocks).
LMPLATFORM_VERBOSE=1 shows all of it again.

The settings are environment variables because most are read by other processes (Ray's
workers get them through the job's runtime_env) or when a library is imported."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "LMPLATFORM_VERBOSE"

# Ray Train's print patch sends a worker's print() to its logger *and*, because Ray has
# already wrapped the worker's stdout, to the original print: every progress line came twice.
ALWAYS = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
QUIET = {
    # Ray Data's progress: tqdm bars redrawn across processes ("[A" escapes in a job's log)
    # become INFO log lines, which RAY_DATA_LOG_LEVEL then keeps off the console; its warnings
    # stay (disabling the bars instead made it warn that they were disabled)
    "RAY_TQDM": "0",
    "RAY_DATA_LOG_LEVEL": "WARNING",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    # a forced experiment snapshot per kept checkpoint is how our searches work: Tune warned
    # about it after every evaluation, with nothing for the user to change
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Ray folds lines that differ only in numbers, so two trials' progress lines came out as
    # one line "[repeated 13x across cluster]": ours are one line per event already
    "RAY_DEDUP_LOGS": "0",
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def job_env() -> dict[str, str]:
    """The variables every process of a job gets (a user's own setting of one wins)."""
    return {**ALWAYS, **({VERBOSE_ENV: "1"} if verbose() else QUIET)}


def setup_process() -> None:
    """Apply the job's console settings to this process; call before Ray or datasets is
    imported (the job entry points do, in `cli.run`)."""
    for k, v in job_env().items():
        os.environ.setdefault(k, v)


def worker_env_vars() -> dict[str, str]:
    """The settings for the runtime_env of the Ray this process starts or joins, less those the
    submitted job's own runtime_env already sets (Ray refuses a key set twice)."""
    taken = set()
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if injected:
        taken = set(((json.loads(injected).get("runtime_env") or {}).get("env_vars")) or {})
    return {k: os.environ.get(k, v) for k, v in job_env().items() if k not in taken}


def train_log_level() -> str:
    """Ray Train's own log level on the console (RunConfig.logging_config): its per-report,
    per-checkpoint and worker-group lines are INFO."""
    return "INFO" if verbose() else "WARNING"


def quiet_ray_train_logger() -> None:
    """In a Ray Train worker or a Tune trial: Ray Train logs every report and checkpoint at
    INFO; the report line comes from a logger named after its file (Ray 2.60), outside the
    `ray.train` logger that RunConfig's logging_config sets."""
    if verbose():
        return
    from ray.train.v2._internal.execution import context

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


class _ThisThread(io.TextIOBase):
    """A stream that keeps what the calling thread writes and passes on what other threads
    write (Ray's log-streaming thread in a driver must not be silenced)."""

    def __init__(self, stream):
        self.stream, self.owner, self.kept = stream, threading.get_ident(), io.StringIO()

    def write(self, text: str) -> int:
        if threading.get_ident() == self.owner:
            return self.kept.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def library_output(what: str) -> Iterator[None]:
    """Keep a library's prints and progress bars off the console (DeepSpeed's checkpoint
    merging prints five lines and a bar); shown after all if it fails, or when verbose.
    Warnings it raises are shown either way."""
    if verbose():
        yield
        return
    out, err = _ThisThread(sys.stdout), _ThisThread(sys.stderr)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
    except BaseException:
        kept = out.kept.getvalue() + err.kept.getvalue()
        print(f"[{what}] output before the error:\n{kept}", file=sys.stderr)
        raise
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
