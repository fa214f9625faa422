"""Throughput accounting: a measured matmul peak to compute MFU against."""

from __future__ import annotations

import functools
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
