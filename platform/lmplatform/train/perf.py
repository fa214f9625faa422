"""Throughput: a measured matmul peak to compute MFU against, and the allocator setting that
keeps a CPU training step from page-faulting its own activations in."""

from __future__ import annotations

import ctypes
import functools
import sys
import time

import torch


@functools.cache
def matmul_peak_flops(
    dtype: torch.dtype = torch.bfloat16, device: str = "cpu", n: int = 2048, seconds: float = 1.0
) -> float:
    """Best sustained FLOP/s of one large square matmul on this device, measured now.

    MFU against a measured peak is honest on machines whose datasheet peak is unknown (or
    unreachable, like a shared CPU); on GPUs it lands near the datasheet value.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    return best


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next step instead of handing it back to
    the kernel (once per process; True where it took effect).

    A training step allocates and frees the same activation-sized blocks every step. By
    default glibc serves blocks over its (adaptive, at most 32 MiB) mmap threshold with fresh
    `mmap`s and trims the heap's free top, so every step the kernel faults in and zeroes them
    again: measured 22,000-30,000 page faults per BERT-mini step on 2 cores (about 100 MB),
    and 8-15 % of the step (`bench/pretrain_throughput.py` prints the faults per step). With
    the threshold at its 32 MiB maximum and trimming off it was under 100 faults, at the same
    peak memory. A process-wide setting: the bench applies it to both sides. Other C
    libraries (macOS, musl) are left as they are."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, 32 << 20),  # glibc refuses more (HEAP_MAX_SIZE / 2)
            (_M_TRIM_THRESHOLD, 1 << 30),
            (_M_TOP_PAD, 64 << 20),
        )
    )
