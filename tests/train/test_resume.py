"""Resuming pretraining: a changed data layout is converted or refused, a checkpoint of another
DeepSpeed layout resumes from its fp32 weights, pretraining refuses bad settings before any
worker starts."""

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT
from lmplatform.config import ConfigError, load_config
from lmplatform.models import GPTConfig
from lmplatform.models.tasks import build_pretraining_model
from lmplatform.pretraining.config import PretrainJobConfig
from lmplatform.pretraining.run import check_before_training
from lmplatform.train.config import TrainConfig
from lmplatform.train.worker_parts import STATE, DataLayout, Resume, checkpoint_state

EXAMPLES = {"examples_key": "a1b2", "examples": 5000}


def _layout(batch_size=32, accum=1, world=2, data=EXAMPLES):
    return DataLayout(batch_size, accum, world, data)


def _resume(state, now, mode="error"):
    return Resume.from_state(state, now, mode)


def test_a_resume_on_other_examples_is_refused_naming_the_change():
    """A data position counted in one example set means nothing in another: refused with what
    changed and how to go on; `train.resume_mismatch=warn` keeps the step and starts the new
    set from its beginning."""
    state = checkpoint_state(40, 40, 100_000, _layout())
    now = _layout(data={"examples_key": "c3d4", "examples": 6000})
    with pytest.raises(ConfigError) as e:
        _resume(state, now)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("step 40", "examples 5000 -> 6000", "examples_key a1b2 -> c3d4", "`name`"):
        assert part in msg, msg
    assert "train.resume_mismatch=warn" in msg
    r = _resume(state, now, "warn")
    assert (r.start_step, r.batches_seen, r.tokens_seen) == (40, 0, 100_000)
    assert "changed" in r.describe() and "warning" in r.describe()


def test_a_resume_converts_the_position_when_the_batch_layout_changed():
    """The checkpoint records batch size, accumulation and workers; the position carries over
    in examples (40 batches of 32 on 2 workers: 2560 examples) and the change is reported."""
    state = checkpoint_state(20, 40, 1, _layout(batch_size=32, accum=2))
    same = _resume(state, _layout(batch_size=32, accum=2))
    assert same.batches_seen == 40 and same.notes == []
    halved = _resume(state, _layout(batch_size=16, accum=4))  # same 128 examples a step
    assert halved.batches_seen == 80 and not halved.resized
    assert "train.batch_size 32 -> 16" in halved.describe()
    assert "train.grad_accum_steps 2 -> 4" in halved.describe()
    odd = _resume(state, _layout(batch_size=48, accum=2))  # 2560 = 26 * 96 + 64
    assert odd.batches_seen == 26 and "the last 64 read again" in odd.notes[0]
    assert "192 examples, not 128" in odd.notes[0]
    grown = _resume(state, _layout(batch_size=32, accum=2, world=4))  # elastic: no note
    assert grown.batches_seen == 20 and grown.resized and grown.notes == []


def test_an_old_checkpoint_without_the_layout_still_resumes_with_a_warning():
    state = {"step": 12, "world_size": 2, "batches_seen": 24, "tokens": 999}  # the old format
    r = _resume(state, _layout(batch_size=8))
    assert (r.start_step, r.batches_seen, r.tokens_seen) == (12, 24, 999)
    assert "does not record batch_size, grad_accum_steps, data" in r.describe()


def test_pretraining_refuses_before_any_worker_starts(tmp_path):
    """The driver reads the newest checkpoint's train state (not its weights) and refuses what
    every worker would fail on, retried scaling.max_failures times."""
    job = load_config(
        PretrainJobConfig,
        ROOT / "jobs" / "configs" / "pretrain" / "bert-sample.yaml",
        ["name=r", f"output_dir={tmp_path}", "scaling.num_workers=2", "train.batch_size=32"],
    )
    prepared = SimpleNamespace(manifest={"key": "a1b2", "examples": 5000})
    check_before_training(job, prepared)  # a fresh run
    for step, key in ((4, "a1b2"), (8, "zzzz")):  # the newest decides
        d = tmp_path / "ray" / "r" / f"checkpoint_{step}"
        d.mkdir(parents=True)
        layout = _layout(data={"examples_key": key, "examples": 5000})
        (d / STATE).write_text(json.dumps(checkpoint_state(step, step, 0, layout)))
    with pytest.raises(ConfigError, match="examples_key zzzz -> a1b2"):
        check_before_training(job, prepared)
    check_before_training(
        job.model_copy(update={"train": job.train.model_copy(update={"resume_mismatch": "warn"})}),
        prepared,
    )
    small = SimpleNamespace(manifest={"key": "zzzz", "examples": 50})
    with pytest.raises(ConfigError, match=r"train.batch_size=32 .* set train.batch_size=25"):
        check_before_training(job, small)


@pytest.mark.parametrize("stage", [0, 2])
def test_a_checkpoint_of_another_engine_layout_resumes_from_its_fp32_weights(
    stage, one_rank_group, tmp_path, monkeypatch
):
    """A checkpoint written in DeepSpeed's `bf16` mode (before one precision path) holds
    optimizer state an autocast engine cannot load (ZeRO-0: KeyError 'param_groups'; ZeRO-2:
    `bf16_zero_*` files). The resume names the layout change, takes the merged fp32 weights
    before the engine exists, restarts AdamW and continues the schedule at the step; the next
    checkpoint, in the run's own layout, loads whole."""
    from ray.train import Checkpoint

    from lmplatform.train import deepspeed_engine as dse
    from lmplatform.train.worker_parts import TAG

    cfg = TrainConfig(batch_size=2, lr=1e-2, warmup_ratio=0.0, precision="bf16")
    scaling, layout = dse.ScalingConfig(zero_stage=stage), _layout(world=1)
    batch = {
        "input_ids": torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    }

    def trained_for_a_step(seed: int, d):
        torch.manual_seed(seed)
        model = build_pretraining_model(GPTConfig(size="debug", vocab_size=300, dropout=0.0))
        stepper = dse.DeepSpeedStepper(model, cfg, scaling, 1, 10)
        stepper.backward(stepper.engine(**batch)["loss"])
        stepper.engine.save_checkpoint(d, tag=TAG)
        (d / STATE).write_text(json.dumps(checkpoint_state(1, 1, 32, layout)))
        return stepper

    with monkeypatch.context() as m:  # the old engine config: 16-bit weights
        m.setattr(dse, "precision_config", lambda p: {"bf16": {"enabled": True}})
        old = trained_for_a_step(0, tmp_path / "old")
    old_w = old.engine.module.blocks[0].fc.weight.detach().float().clone()

    now = dse.engine_layout(dse.deepspeed_config(cfg, scaling, 1))
    resume = Resume.from_checkpoint(Checkpoint.from_directory(tmp_path / "old"), layout, engine=now)
    assert resume.engine_change == f"ZeRO-{stage}, bf16 weights -> ZeRO-{stage}, bf16 autocast"
    assert "AdamW moments restarted" in resume.describe() and resume.start_step == 1
    torch.manual_seed(1)  # another initialisation: the weights must come from the checkpoint
    model = build_pretraining_model(GPTConfig(size="debug", vocab_size=300, dropout=0.0))
    resume.load_resized_weights(model)
    stepper = dse.DeepSpeedStepper(model, cfg, scaling, 1, 10)
    resume.restore(stepper)
    w = stepper.engine.module.blocks[0].fc.weight.detach()
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, old_w, rtol=1e-2, atol=1e-5)  # fp32 master vs its bf16 copy
    assert stepper.scheduler.last_epoch == 1

    stepper.backward(stepper.engine(**batch)["loss"])  # trains on, then checkpoints its own way
    stepper.engine.save_checkpoint(tmp_path / "new", tag=TAG)
    (tmp_path / "new" / STATE).write_text(json.dumps(checkpoint_state(2, 2, 64, layout)))
    again = Resume.from_checkpoint(Checkpoint.from_directory(tmp_path / "new"), layout, engine=now)
    assert again.engine_change == "" and not again.fresh_optimizer
    torch.manual_seed(2)
    fresh = dse.DeepSpeedStepper(
        build_pretraining_model(GPTConfig(size="debug", vocab_size=300, dropout=0.0)),
        cfg,
        scaling,
        1,
        10,
    )
    again.restore(fresh)
    assert torch.equal(
        fresh.engine.module.blocks[0].fc.weight, stepper.engine.module.blocks[0].fc.weight
    )
    assert fresh.scheduler.last_epoch == 2
