"""Checkpoints are read without pickle: a planted object in a trial checkpoint is refused
before it can run code."""

from __future__ import annotations

import pytest
import torch


class _Planted:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_trial_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    from lmplatform.tune.trial import CKPT, load_trial_state

    ok = {"model": {"w": torch.ones(2)}, "step": 3, "trial": "t0", "hp": {"lr": 1e-3}}
    torch.save(ok, tmp_path / CKPT)
    assert load_trial_state(tmp_path)["step"] == 3

    marker = tmp_path / "code-ran"
    torch.save({**ok, "hp": {"lr": _Planted(str(marker))}}, tmp_path / CKPT)
    with pytest.raises(ValueError, match="trial.pt: refused"):
        load_trial_state(tmp_path)
    assert not marker.exists()


_DEEPSPEED_ROUND_TRIP = r"""
import glob, os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
import torch
torch.distributed.init_process_group("gloo")
from lmplatform.train.config import ScalingConfig, TrainConfig
from lmplatform.train.deepspeed_engine import DeepSpeedStepper, weights_only_loads
from lmplatform.train.worker_parts import TAG, consolidated_state_dict

def stepper():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    return DeepSpeedStepper(model, TrainConfig(batch_size=2, lr=1e-3), ScalingConfig(zero_stage=2), 1, 10)

d = sys.argv[1]
a = stepper()
a.backward(a.engine(torch.randn(2, 8)).sum())
a.engine.save_checkpoint(d, tag=TAG)
b = stepper()
with weights_only_loads(d):  # ZeRO-2 optimizer shards hold DeepSpeed classes: allow-listed
    b.engine.load_checkpoint(d, tag=TAG)
w = consolidated_state_dict(d)
assert torch.equal(w["1.weight"], a.engine.module[1].weight.detach().float())
print("ROUND TRIP OK", sorted(os.listdir(os.path.join(d, TAG))))
"""


def test_deepspeed_checkpoints_load_without_pickle_and_refuse_a_planted_object(tmp_path):
    """DeepSpeed loads with weights_only=False itself; ours force weights_only with an
    allow-list of the DeepSpeed classes ZeRO checkpoints hold: a real ZeRO-2 checkpoint
    round-trips, an object planted in its optimizer shard is refused before it runs."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    ckpt = tmp_path / "ckpt"
    out = subprocess.run(
        [sys.executable, "-c", _DEEPSPEED_ROUND_TRIP, str(ckpt), port],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "0"},
    )
    assert "ROUND TRIP OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]

    from lmplatform.train.deepspeed_engine import weights_only_loads

    (shard,) = (ckpt / "state").glob("*optim_states.pt")
    with weights_only_loads(str(ckpt)):
        state = torch.load(shard, map_location="cpu")
    marker = tmp_path / "code-ran"
    state["planted"] = _Planted(str(marker))
    torch.save(state, shard)
    with pytest.raises(ValueError, match=r"ckpt: refused, a DeepSpeed checkpoint file holds"):
        with weights_only_loads(str(ckpt)):
            torch.load(shard, map_location="cpu", weights_only=False)  # as DeepSpeed calls it
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # put back as it was
