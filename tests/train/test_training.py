"""The training loop: loss falls for every family, accumulation is exact, frozen means frozen."""

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT
from lmplatform.config import ConfigError, load_config
from lmplatform.data.sources import DataSource
from lmplatform.models import BertConfig, GPTConfig, LSTMConfig
from lmplatform.models.bert.pretraining import BertCollator
from lmplatform.models.gpt.pretraining import causal_collate
from lmplatform.models.objective import ExamplesConfig
from lmplatform.models.tasks import TaskModel, build_encoder, build_pretraining_model
from lmplatform.pretraining.config import PretrainJobConfig
from lmplatform.pretraining.data import batch_iterator, build_examples_local
from lmplatform.pretraining.run import check_before_training
from lmplatform.tasks.data import load_labelled
from lmplatform.tasks.encoding import TaskEncoder
from lmplatform.tokenization import (
    TokenizerConfig,
    continuation_mask,
    load_tokenizer,
    special_tokens,
    train_tokenizer,
)
from lmplatform.train.config import TrainConfig
from lmplatform.train.loop import FitResult, TorchStepper, fit, lr_lambda
from lmplatform.train.worker_parts import STATE, DataLayout, Resume, checkpoint_state


@pytest.fixture(scope="module")
def small_tokenizers(wikitext_corpus, tmp_path_factory):
    _, corpus = wikitext_corpus
    out = {}
    for kind in ("wordpiece", "bpe"):
        d = tmp_path_factory.mktemp(kind)
        out[kind] = train_tokenizer(
            TokenizerConfig(kind=kind, vocab_size=2000),
            (b["text"] for b in corpus.iter(batch_size=50)),
            d,
        )
    return out


def _batches(family, corpus, tok_path, batch_size=16):
    tok = load_tokenizer(tok_path)
    objective = "bert" if family == "bert" else "causal"
    rows = build_examples_local(
        corpus["text"],
        objective,
        tok_path.read_text(),
        ExamplesConfig(max_seq_len=128, docs_per_batch=16),
    )
    if objective == "bert":
        sp = special_tokens(tok)
        collate = BertCollator(
            pad_id=sp.pad,
            mask_id=sp.mask,
            special_ids=sp.all,
            vocab_size=tok.get_vocab_size(),
            continuation=continuation_mask(tok),
        )
    else:
        collate = causal_collate
    return batch_iterator(rows, batch_size, collate), tok.get_vocab_size()


@pytest.mark.parametrize(
    ("family", "cell"),
    [("bert", None), ("gpt", None), ("lstm", "lstm"), ("lstm", "gru"), ("lstm", "rnn")],
)
def test_loss_falls_within_200_steps_on_the_shared_corpus(
    family, cell, wikitext_corpus, small_tokenizers
):
    """Every family learns; the biLM with each recurrent cell (the seeds' plain tanh RNN too)."""
    torch.manual_seed(0)
    _, corpus = wikitext_corpus
    batches, vocab = _batches(
        family, corpus, small_tokenizers["wordpiece" if family == "bert" else "bpe"]
    )
    cfg = {"bert": BertConfig, "gpt": GPTConfig, "lstm": LSTMConfig}[family](
        size="debug", vocab_size=vocab, **({"cell": cell} if cell else {})
    )
    model = build_pretraining_model(cfg)
    train = TrainConfig(batch_size=16, max_steps=200, lr=2e-3, warmup_ratio=0.05, log_every=50)
    res = fit(model, batches, train, total_steps=200, name=family)
    losses = [h["loss"] for h in res.history]
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    print(f"{family} {cell or ''}: loss {first:.3f} -> {last:.3f} in 200 steps")
    assert len(losses) == 200 and all(math.isfinite(x) for x in losses)
    assert last < first - 0.5  # nats: far beyond noise (a stalled run moves < 0.05)
    if family == "bert":
        # one step's accuracy is noisy (tokenizer training is not bit-deterministic): average.
        # Measured 0.050-0.058 over the last 20 steps (0.0499 on one CI run); chance is ~1/8000
        acc = sum(h["mlm_acc"] for h in res.history[-20:]) / 20
        assert acc > 0.03 and "nsp_acc" in res.history[-1]


class _CaptureGrads:
    """A stepper that keeps the gradients the loop would step on, instead of stepping."""

    def __init__(self, model):
        self.model, self.lr, self.backwards, self.grads = model, 0.0, 0, None

    def backward(self, loss):
        self.backwards += 1
        loss.backward()

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}
        self.model.zero_grad(set_to_none=True)
        return None


def test_gradient_accumulation_equals_a_bigger_batch():
    """Two micro-batches of 4 give the gradient of one batch of 8 (equal token counts, so the
    per-micro-batch means average exactly). Gradients, not weights after a step: AdamW's first
    step is lr * g / (|g| + eps), which turns a rounding-level difference on a near-zero
    coordinate (a key bias's gradient is zero up to rounding) into a whole +-lr step, and which
    rounding you get depends on the CPU's kernels. The bound is a property of fp32 sums:
    1e-4 of each tensor's largest gradient is ~1,700 units of fp32 rounding (measured: ~5),
    while a missing 1/grad_accum_steps or a lost micro-batch is off by the scale itself."""
    torch.manual_seed(0)
    cfg = GPTConfig(size="debug", vocab_size=300, dropout=0.0)
    data = torch.randint(0, 300, (8, 32))
    a = build_pretraining_model(cfg)
    b = build_pretraining_model(cfg)
    b.load_state_dict(a.state_dict())
    one = TrainConfig(
        batch_size=8,
        grad_accum_steps=1,
        lr=1e-3,
        warmup_ratio=0.0,
        clip_grad_norm=None,
        log_every=1,
    )
    two = one.model_copy(update={"batch_size": 4, "grad_accum_steps": 2})
    sa, sb = _CaptureGrads(a), _CaptureGrads(b)
    ra = fit(a, itertools.repeat({"input_ids": data}), one, total_steps=1, stepper=sa, log=None)
    rb = fit(
        b,
        itertools.cycle([{"input_ids": data[:4]}, {"input_ids": data[4:]}]),
        two,
        total_steps=1,
        stepper=sb,
        log=None,
    )
    assert (sa.backwards, sb.backwards) == (1, 2)
    assert rb.history[0]["loss"] == pytest.approx(ra.history[0]["loss"], rel=1e-5)
    for n, ga in sa.grads.items():
        atol = 1e-4 * float(ga.abs().max()) + 1e-12
        torch.testing.assert_close(sb.grads[n], ga, rtol=0, atol=atol, msg=n)


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup_ratio=0.1, schedule="linear", min_lr_ratio=0.1)
    f = lr_lambda(cfg, 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert (
        f(10) == pytest.approx(1.0)
        and f(55) == pytest.approx(0.55)
        and f(100) == pytest.approx(0.1)
    )
    cos = lr_lambda(cfg.model_copy(update={"schedule": "cosine"}), 100)
    assert cos(55) == pytest.approx(0.55) and cos(100) == pytest.approx(0.1)
    model = torch.nn.Linear(2, 2)
    stepper = TorchStepper(model, cfg, 100)
    lrs = []
    for _ in range(12):
        model(torch.ones(1, 2)).sum().backward()
        stepper.step()
        lrs.append(stepper.lr)
    assert lrs[8] == pytest.approx(1.0) and lrs[11] < 1.0


@pytest.mark.parametrize("frozen", [True, False])
def test_feature_extraction_leaves_the_encoder_bit_identical(frozen, sample_dir, small_tokenizers):
    torch.manual_seed(0)
    tok = load_tokenizer(small_tokenizers["wordpiece"])
    data = load_labelled(
        DataSource(path="sample://sentiment/train.tsv", text_column="sentence"),
        "classification",
        ["negative", "positive"],
        labels_are_indices=True,  # the sample's labels are 0 and 1
    )
    enc = TaskEncoder(tok, "classification", 64)
    rows = data.dataset.select(range(256)).to_dict()
    batches = batch_iterator(
        {"text": rows["text"], "label": rows["label"]},
        16,
        lambda b: enc.collate([dict(zip(b, v)) for v in zip(*b.values())]),
    )
    model = TaskModel(
        build_encoder(BertConfig(size="debug", vocab_size=tok.get_vocab_size())),
        "classification",
        2,
        frozen=frozen,
    )
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.head.weight.clone()
    res = fit(
        model,
        batches,
        TrainConfig(lr=5e-3, weight_decay=0.1, warmup_ratio=0.0, log_every=100),
        total_steps=30,
        log=None,
    )
    after = model.encoder.state_dict()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    assert unchanged is frozen
    assert not torch.equal(head_before, model.head.weight)
    if not frozen:  # a random-init encoder gives weak features; full fine-tuning must learn
        assert sum(h["loss"] for h in res.history[-5:]) < sum(h["loss"] for h in res.history[:5])


def test_compiled_training_and_serving_match_eager(small_tokenizers, tmp_path):
    """`train.compile` / `serve.compile`: torch.compile in place (aot_eager here: CI has no time
    for inductor's C++ builds) computes what eager does, and the state dict keeps its names."""
    from lmplatform.models.io import save_pretrained
    from lmplatform.serving.predictors import ModelInfo, TaskPredictor

    data = [
        torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(i)) for i in range(5)
    ]
    batches = [{"input_ids": x, "labels": x} for x in data]
    losses = {}
    for backend in (None, "aot_eager"):
        torch.manual_seed(0)
        model = build_pretraining_model(GPTConfig(size="debug", vocab_size=300, dropout=0.0))
        cfg = TrainConfig(lr=1e-3, warmup_ratio=0.0, log_every=100, compile=backend)
        res = fit(model, batches, cfg, total_steps=5, log=None)
        losses[backend] = [h["loss"] for h in res.history]
        assert not any(k.startswith("_orig_mod") for k in model.state_dict())
    assert losses["aot_eager"] == pytest.approx(losses[None], abs=1e-4)

    tok = load_tokenizer(small_tokenizers["wordpiece"])
    torch.manual_seed(0)
    enc = build_encoder(BertConfig(size="debug", vocab_size=tok.get_vocab_size()))
    folder = save_pretrained(
        TaskModel(enc, "classification", 2),
        tmp_path / "task",
        tokenizer=small_tokenizers["wordpiece"],
        extra={"labels": ["neg", "pos"], "max_seq_len": 32},
    )
    texts = ["a fine film", "dull and long, far too long", "ok"]
    eager = TaskPredictor(folder, ModelInfo(name="t", version="v1"))
    compiled = TaskPredictor(folder, ModelInfo(name="t", version="v1"), compile="aot_eager")
    for a, b in zip(eager.predict(eager.parse(texts)), compiled.predict(compiled.parse(texts))):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


# --------------------------------------------------------------------------- precision and syncs


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
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
    if engine == "deepspeed":
        request.getfixturevalue("one_rank_group")
        stepper = DeepSpeedStepper(model, cfg, ScalingConfig(zero_stage=0), 1, 8)
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
    assert around == ([False] * 8 if engine == "deepspeed" else [])
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


# --------------------------------------------------------------------------- resuming pretraining

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
