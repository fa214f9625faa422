"""One precision path with and without DeepSpeed, and a loop that reads the device once per
kept step."""

import itertools

import pytest
import torch

from lmplatform.models import GPTConfig
from lmplatform.models.tasks import build_pretraining_model
from lmplatform.train.config import TrainConfig
from lmplatform.train.loop import FitResult, TorchStepper, fit


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("engine", ["torch", "deepspeed", "deepspeed-zero2"])
def test_one_precision_path_with_and_without_deepspeed(engine, precision, request):
    """`train.precision` is torch autocast over fp32 weights, with or without DeepSpeed: the
    loop applies it to a plain model; a DeepSpeed engine takes it from its generated config,
    inside its own forward (the same on CPU and GPU), with no autocast around it (DeepSpeed
    turns an outer one off on GPUs only). A hook on a Linear sees the weights and the output
    dtype, in training and in an evaluation that calls the engine's bare module; loss falls."""
    from lmplatform.train.config import ScalingConfig
    from lmplatform.train.deepspeed_engine import DeepSpeedStepper

    torch.manual_seed(0)
    model = build_pretraining_model(GPTConfig(size="debug", vocab_size=300, dropout=0.0))
    cfg = TrainConfig(
        batch_size=4, lr=3e-3, warmup_ratio=0.0, log_every=100, eval_every=8, precision=precision
    )
    trained, stepper, around = model, None, []
    if engine.startswith("deepspeed"):  # with the fused AdamW, over ZeRO's flat partitions too
        request.getfixturevalue("one_rank_group")
        stage = 2 if engine.endswith("zero2") else 0
        stepper = DeepSpeedStepper(model, cfg, ScalingConfig(zero_stage=stage), 1, 8)
        trained = stepper.engine
        trained.register_forward_pre_hook(
            lambda m, args: around.append(torch.is_autocast_enabled("cpu"))
        )
    seen = []
    model.blocks[0].fc.register_forward_hook(
        lambda m, args, out: seen.append((m.training, m.weight.dtype, out.dtype))
    )
    data = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": data}

    def evaluate(m):  # as a tuning trial's evaluation does: the engine's bare module
        return {"eval_loss": float(getattr(m, "module", m)(**batch)["loss"])}

    res = fit(
        trained,
        itertools.repeat(batch),
        cfg,
        total_steps=8,
        stepper=stepper,
        evaluate=evaluate,
        log=None,
    )
    out = torch.float32 if precision == "fp32" else torch.bfloat16
    assert set(seen) == {(True, torch.float32, out), (False, torch.float32, out)}
    assert around == ([False] * 8 if engine.startswith("deepspeed") else [])
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0] - 0.5, losses  # measured 5.71 -> 4.45 in both precisions
    assert isinstance(res.history[-1]["grad_norm"], float)  # ZeRO-0 too


def test_deepspeed_config_sets_precision_by_autocast_only():
    """The generated DeepSpeed config never turns on DeepSpeed's bf16 / fp16 modes (which cast
    the weights to 16 bits): 16-bit precision is its torch_autocast section."""
    from lmplatform.train.config import ScalingConfig
    from lmplatform.train.deepspeed_engine import deepspeed_config

    for precision, section in (
        ("fp32", None),
        ("bf16", {"enabled": True, "dtype": "bf16"}),
        ("fp16", {"enabled": True, "dtype": "fp16"}),
    ):
        cfg = deepspeed_config(TrainConfig(precision=precision), ScalingConfig(zero_stage=2), 4)
        assert "bf16" not in cfg and "fp16" not in cfg
        assert cfg.get("torch_autocast") == section


class _OnDevice(torch.Tensor):
    """Stands for a tensor on an accelerator: counts the reads that would wait for it."""

    reads = 0

    def _read(self, how, *args):
        _OnDevice.reads += 1
        return getattr(torch.Tensor, how)(self.as_subclass(torch.Tensor), *args)

    def item(self):
        return self._read("item")

    def tolist(self):
        return self._read("tolist")

    def __float__(self):
        return self._read("__float__")

    def __int__(self):
        return self._read("__int__")

    def __bool__(self):
        return self._read("__bool__")


class _OnHost(torch.Tensor):
    """A collated batch's tensor: moved "to the device" it becomes an `_OnDevice`."""

    def to(self, *args, **kwargs):
        return super().to(*args, **kwargs).as_subclass(_OnDevice)


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def forward(self, x, attention_mask, **_):
        loss = ((self.lin(x)[:, 0] - 1) ** 2 * attention_mask).mean()
        return {"loss": loss, "small": (loss < 1).float(), "rows": attention_mask.sum()}


def _reads_in_a_run(
    steps: int, accum: int, log_every: int, xs=None, on_step=None, log=None
) -> tuple[int, FitResult]:
    torch.manual_seed(0)
    mask = torch.ones(8).as_subclass(_OnHost)
    batches = [
        {"x": x.as_subclass(_OnHost), "attention_mask": mask} for x in xs or [torch.randn(8, 4)]
    ]
    cfg = TrainConfig(batch_size=8, grad_accum_steps=accum, lr=1e-2, log_every=log_every)
    _OnDevice.reads = 0
    res = fit(_Regression(), batches, cfg, total_steps=steps, log=log, on_step=on_step)
    return _OnDevice.reads, res


def test_the_loop_reads_the_device_once_per_kept_step_not_per_micro_batch():
    """Every read of a device value stalls the GPU's queue: the loop keeps metrics as device
    tensors and reads them all in one transfer at the steps someone reads (first, log, last);
    tokens are counted on the host batch. History and progress lines hold the same numbers."""
    few, _ = _reads_in_a_run(steps=2, accum=1, log_every=100)
    many, res = _reads_in_a_run(steps=9, accum=3, log_every=100)
    assert few == many == 2  # steps 1 and 9: one read each
    lines = []
    logged, res = _reads_in_a_run(steps=9, accum=3, log_every=3, log=lines.append)
    assert logged == 4  # steps 1, 3, 6, 9
    for h in res.history:
        assert all(isinstance(v, int | float) for v in h.values()), h
    assert res.history[0]["rows"] == 8.0 and res.tokens == 9 * 3 * 8  # averaged, counted
    assert isinstance(res.history[4]["grad_norm"], float)
    h = res.history[2]
    assert lines[0].startswith(
        f"[train] step 3/9 | loss {h['loss']:.4g} | small {h['small']:.4g} | rows 8 | "
        f"grad_norm {h['grad_norm']:.4g} | lr "
    ), lines[0]


def test_the_torch_stepper_leaves_the_gradient_norm_on_the_device():
    model = torch.nn.Linear(2, 2)
    stepper = TorchStepper(model, TrainConfig(clip_grad_norm=1.0), 10)
    model(torch.ones(1, 2)).sum().backward()
    assert isinstance(stepper.step(), torch.Tensor)


def test_a_non_finite_loss_stops_the_run_naming_its_step():
    """Read back late, a NaN loss still stops the run at the next kept step (here the last),
    and the error names the step it came from. No step after the last kept one was read, so
    `on_step` had nothing to report or checkpoint for them: their metrics were unread tensors."""
    xs = [torch.randn(8, 4) for _ in range(9)]
    xs[3][0, 0] = float("nan")  # step 4 (its NaN gradient makes every later step NaN too)
    seen = []
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 4: \{'loss': nan"):
        _reads_in_a_run(
            steps=9,
            accum=1,
            log_every=100,
            xs=xs,
            on_step=lambda step, m: seen.append((step, isinstance(m["loss"], float))),
        )
    assert seen == [(1, True)] + [(step, False) for step in range(2, 9)]
