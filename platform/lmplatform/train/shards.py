"""Sharded evaluation: with N workers each rank scores every N-th batch of the eval rows and
the ranks' sums are added, so N workers do the evaluation work once, not N times.

The batches are the ones a single rank would cut (the same rows, cut at the same places), so
whatever is computed per batch (its mean loss, its masks) is the same as well; sums of counts
are then equal to one rank's, and sums of losses equal up to the order of float additions.
"""

from __future__ import annotations

import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_starts(n: int, bs: int, lockstep: bool = False) -> list[int | None]:
    """Where this rank's eval batches start in rows 0..n-1 (batches of `bs`). `lockstep`:
    every rank gets as many entries, a None standing for a batch to run and throw away. ZeRO-3
    gathers each layer's parameters from all ranks inside the forward pass, so every rank must
    run the same number of forwards or the last one waits forever."""
    rank, world = rank_and_world()
    every = list(range(0, n, bs))
    mine: list[int | None] = list(every[rank::world])
    if lockstep:
        mine += [None] * (-(-len(every) // world) - len(mine))
    return mine


def gathered(value) -> list:
    """`value` of every rank, in rank order (a list of one without a process group)."""
    rank, world = rank_and_world()
    if world == 1:
        return [value]
    out: list = [None] * world
    dist.all_gather_object(out, value)
    return out
