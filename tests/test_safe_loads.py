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
