"""Sharded evaluation's split (lmplatform/train/shards.py) in a real 2-process gloo group: the
ranks' batches cover every row once, ZeRO-3's lockstep pads the shorter share, and
`gathered` hands every rank the values of all."""

import socket

import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, port: int, out) -> None:
    from lmplatform.train.shards import batch_starts, gathered

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        out.put(
            (rank, batch_starts(50, 8), batch_starts(50, 8, lockstep=True), gathered(rank * 10))
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_split_the_batches_and_gather_their_sums():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict((r, rest) for r, *rest in (out.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # 50 rows in batches of 8: starts 0, 8, ..., 48 (7 batches), every other one per rank
    assert got[0][0] == [0, 16, 32, 48] and got[1][0] == [8, 24, 40]
    assert got[1][1] == [8, 24, 40, None]  # lockstep: one forward more, thrown away
    assert got[0][2] == got[1][2] == [0, 10]
