"""The training loop: accumulation, warmup + decay, clipping, precision, evaluation, progress.

It is plain single-process PyTorch. Distribution is someone else's job: a Ray Train worker
passes its own batch iterator and, with DeepSpeed, a `Stepper` that calls the engine; the loop
itself does not change. The device is waited for only at the steps whose metrics someone
reads (see `_Readback`), never per micro-batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lmplatform.models.layers import set_activation_checkpointing
from lmplatform.train.config import EarlyStopping, Precision, TrainConfig
from lmplatform.train.perf import format_eta, keep_freed_memory


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warmup from 0 to the peak, then linear / cosine decay to `min_lr_ratio`, or constant."""
    warmup = int(round(cfg.warmup_ratio * total_steps))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        decay = (
            1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        )
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return f


def param_groups(
    model: nn.Module, weight_decay: float, lr_scale: Callable[[str], float] | None = None
) -> list[dict]:
    """AdamW groups: no decay on biases and norm weights (every 1-D parameter); optional per-name
    lr scale (layer-wise decay). Frozen parameters are left out entirely."""
    groups: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        decay = 0.0 if p.ndim < 2 else weight_decay
        scale = lr_scale(name) if lr_scale else 1.0
        groups.setdefault((decay, scale), []).append(p)
    return [{"params": ps, "weight_decay": d, "lr_scale": s} for (d, s), ps in groups.items()]


class TorchStepper:
    """Optimizer step for plain PyTorch: AdamW, clipping, scheduler, fp16 loss scaling."""

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, total_steps: int, groups: list[dict] | None = None
    ):
        groups = groups or param_groups(model, cfg.weight_decay)
        for g in groups:
            g["lr"] = cfg.lr * g.get("lr_scale", 1.0)
        self.params = [p for g in groups for p in g["params"]]
        # the fused kernel (one pass over each parameter) on CPU and GPU alike
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, total_steps)
        )
        self.clip = cfg.clip_grad_norm
        self.scaler = (
            torch.amp.GradScaler("cuda")
            if cfg.precision == "fp16" and torch.cuda.is_available()
            else None
        )

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> torch.Tensor | None:
        """One optimizer step; the gradient norm before clipping, left on the device."""
        norm = None
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.clip:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get(
            "lr_scale", 1.0
        )

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _is_deepspeed_engine(model: nn.Module) -> bool:
    return any(c.__name__ == "DeepSpeedEngine" for c in type(model).__mro__)


def precision_context(
    model: nn.Module, precision: Precision, device: torch.device, *, evaluating: bool = False
) -> contextlib.AbstractContextManager:
    """What a forward of `model` runs inside: the one rule for `train.precision`, which is
    torch autocast to the 16-bit dtype over fp32 weights (fp32: nothing).

    A plain module gets that autocast here. A DeepSpeed engine gets nothing around it: its
    generated config's `torch_autocast` section (deepspeed_engine.precision_config) is the same
    autocast, which the engine's forward enters itself. An autocast around an engine is what
    split the paths: DeepSpeed switches it off inside the engine where it notices it (CUDA) but
    not on CPU. Evaluation code may call an engine's bare module (task scorers need its
    methods), which bypasses that forward: there the engine's own context is entered here."""
    if _is_deepspeed_engine(model):
        if not evaluating:
            return contextlib.nullcontext()
        from deepspeed.runtime.torch_autocast import autocast_if_enabled

        return autocast_if_enabled(model)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def count_tokens(batch: dict) -> int:
    """Real tokens in a batch: read it before it moves to the device (`int` of a device tensor
    waits for the device)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    stopped_early_at: int | None = None
    """The step at which early stopping ended the run (None: it ran to `total_steps`)."""


class EarlyStop:
    """`train.early_stopping` on one figure of the evaluations: `watch` = (key, "max" | "min").
    The step it stops at is the last `on_step` sees, with `metrics["early_stop"] = 1`."""

    def __init__(self, cfg: EarlyStopping, watch: tuple[str, str]):
        self.cfg, (self.key, self.mode) = cfg, watch
        self.best: float | None = None
        self.best_step, self.waited = 0, 0

    def update(self, ev: dict) -> bool:
        """Take an evaluation; True when the run should stop after it."""
        value = float(ev[self.key])
        if self.best is None:
            gain = math.inf
        else:
            gain = value - self.best if self.mode == "max" else self.best - value
        if gain > self.cfg.min_delta:
            self.best, self.best_step, self.waited = value, ev["step"], 0
        else:
            self.waited += 1
        return self.waited >= self.cfg.patience

    def reason(self, step: int) -> str:
        return (
            f"early stop at step {step}: {self.key} has not improved by more than "
            f"{self.cfg.min_delta:g} in {self.waited} evaluations (best {self.best:.4g} at "
            f"step {self.best_step})"
        )


def rank0_decides(flag: bool, device) -> bool:
    """Rank 0's `flag` on every rank (as given without a process group): decisions every rank
    must take alike, at the same step, from values that can differ between ranks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)  # NCCL broadcasts only device tensors
    dist.broadcast(t, src=0)
    return bool(t.item())


def _stops_after(stopper: EarlyStop | None, ev: dict, more: bool, device, log, name: str) -> bool:
    """Whether early stopping ends the run at this evaluation (`more`: steps are left);
    rank 0 decides for every rank, and says why."""
    if stopper is None or not rank0_decides(stopper.update(ev), device) or not more:
        return False
    if log:
        log(f"[{name}] {stopper.reason(ev['step'])}")
    return True


class _Meter:
    """Tokens, FLOPs and input waits since the last progress line: throughput, MFU, ETA."""

    def __init__(self, flops_per_token, peak_flops: float | None, start_step: int, total: int):
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.start_step, self.total = start_step, total
        self.t_start = self.t = time.perf_counter()
        self.tokens, self.flops, self.data_wait = 0, 0.0, 0.0
        self.total_tokens = 0

    def add(self, batch: dict) -> int:
        tokens = count_tokens(batch)
        self.tokens += tokens
        self.total_tokens += tokens
        if self.flops_per_token is not None:
            self.flops += self.flops_per_token(batch["input_ids"].shape[1]) * tokens
        return tokens

    def window(self, step: int) -> dict:
        """Rates over the window, which then restarts; `eta_s` from the whole run's pace."""
        now = time.perf_counter()
        dt = max(now - self.t, 1e-9)
        out = {"tokens_per_s": self.tokens / dt, "data_wait": self.data_wait / dt}
        if self.peak and self.flops:
            out["mfu"] = self.flops / dt / self.peak
        out["eta_s"] = (now - self.t_start) / (step - self.start_step) * (self.total - step)
        self.t, self.tokens, self.flops, self.data_wait = now, 0, 0.0, 0.0
        return out


_NOT_SHOWN = (
    "step",
    "lr",
    "tokens",
    "tokens_per_s",
    "mfu",
    "predicted_tokens",
    "data_wait",
    "eta_s",
)


def progress_line(name: str, step: int, total: int, metrics: dict) -> str:
    shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in _NOT_SHOWN)
    mfu = f" | mfu {metrics['mfu']:.1%}" if "mfu" in metrics else ""
    return (
        f"[{name}] step {step}/{total} | {shown} | lr {metrics['lr']:.3g}"
        f" | {metrics['tokens_per_s']:,.0f} tok/s{mfu} | data wait {metrics['data_wait']:.0%}"
        f" | eta {format_eta(metrics['eta_s'])}"
    )


def _cycle(batches: Iterable[dict]) -> Iterator[dict]:
    """The batches again and again (an iterable is re-iterated per epoch)."""
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            return


def _accumulate(model, batches, stepper, cfg: TrainConfig, device, meter: _Meter) -> dict:
    """Forward and backward over `grad_accum_steps` micro-batches; their scalar outputs,
    averaged, as tensors on the device (`_Readback` reads them when someone needs them)."""
    sums: dict[str, torch.Tensor] = {}
    for _ in range(cfg.grad_accum_steps):
        t_data = time.perf_counter()
        host = next(batches)
        batch = to_device(host, device)
        meter.data_wait += time.perf_counter() - t_data  # input-pipeline stalls
        with precision_context(model, cfg.precision, device):
            out = model(**batch)
        stepper.backward(out["loss"] / cfg.grad_accum_steps)
        meter.add(host)
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.dim() == 0:
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
    return {k: v / cfg.grad_accum_steps for k, v in sums.items()}


def _scalars(tensors: list[torch.Tensor]) -> list[float]:
    """0-dim tensors as floats: one device-to-host copy per device, not one per value."""
    out = [0.0] * len(tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for idx in by_device.values():
        for i, v in zip(idx, torch.stack([tensors[i].float().reshape(()) for i in idx]).tolist()):
            out[i] = v
    return out


class _Readback:
    """Metrics of the steps since the last read, read back from the device together.

    Reading a device tensor (`float`, `.item()`) waits for the device to finish all queued work,
    which per micro-batch starves a GPU of queued kernels. So a step's metrics stay tensors
    until a step whose metrics someone reads: a progress line, an evaluation, a checkpoint (the
    caller's `on_step` saves on `checkpoint_every`), the first and the last. Then every pending
    step's values become floats in place (in `FitResult.history` too), and a non-finite loss
    stops the run naming its step, before any of those steps is saved or reported."""

    def __init__(self, cfg: TrainConfig, first: int, last: int, evaluates: bool, name: str):
        self.cfg, self.first, self.last, self.name = cfg, first, last, name
        self.evaluates = evaluates
        self.pending: list[tuple[int, dict, list[str]]] = []

    def due(self, step: int) -> bool:
        every = [self.cfg.log_every, self.cfg.checkpoint_every]
        every += [self.cfg.eval_every] if self.evaluates else []
        return step in (self.first, self.last) or any(step % n == 0 for n in every)

    def add(self, step: int, metrics: dict, outputs: list[str]) -> None:
        """`outputs`: the model's metrics among `metrics` (checked to be finite)."""
        self.pending.append((step, metrics, outputs))
        if self.due(step):
            self.read()

    def read(self) -> None:
        places = [(m, k) for _, m, _ in self.pending for k, v in m.items() if torch.is_tensor(v)]
        for (m, k), v in zip(places, _scalars([m[k].detach() for m, k in places])):
            m[k] = v
        pending, self.pending = self.pending, []
        for step, m, outputs in pending:
            sums = {k: m[k] for k in outputs}
            if not all(math.isfinite(v) for v in sums.values()):
                raise FloatingPointError(f"{self.name}: non-finite loss at step {step}: {sums}")


def _evaluate(model, evaluate, cfg: TrainConfig, device, step: int, log, name: str) -> dict:
    """One evaluation in eval mode and the run's precision; printed when `log` is given."""
    model.eval()
    with torch.no_grad(), precision_context(model, cfg.precision, device, evaluating=True):
        ev = {"step": step, **evaluate(model)}
    model.train()
    if log:
        _log_eval(log, name, step, ev)
    return ev


def _log_eval(log, name: str, step: int, ev: dict) -> None:
    shown = ", ".join(
        f"{k} {v:.4g}" for k, v in ev.items() if k != "step" and isinstance(v, int | float)
    )
    log(f"[{name}] eval at step {step}: {shown}")


def _prepare(model: nn.Module, cfg: TrainConfig) -> None:
    """What makes steps fast: memory kept for the next step's activations (no page faults),
    and the compiled model where the config asks."""
    keep_freed_memory()
    if cfg.activation_checkpointing and not set_activation_checkpointing(model):
        raise ValueError(
            f"train.activation_checkpointing: {type(model).__name__} has no layer stack to "
            "checkpoint"
        )
    if cfg.compile:  # in place (a DeepSpeed engine compiles its module): names stay the same
        model.compile(backend=cfg.compile)


def fit(
    model: nn.Module,
    batches: Iterable[dict],
    cfg: TrainConfig,
    *,
    total_steps: int,
    stepper=None,
    device: str | torch.device = "cpu",
    evaluate: Callable[[nn.Module], dict] | None = None,
    start_step: int = 0,
    peak_flops: float | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] | None = print,
    log_evals: bool = True,
    name: str = "train",
    watch: tuple[str, str] | None = None,
) -> FitResult:
    """Run optimizer steps `start_step + 1 … total_steps`, each over `grad_accum_steps` batches.

    `batches` is any iterable of dicts of tensors (re-iterated when exhausted); the model returns
    a dict with `loss` and any scalar metrics (mlm_acc, nsp_acc, ppl…), which are averaged over
    the micro-batches and logged. `on_step` / `on_eval` let a caller report or checkpoint;
    `log_evals=False` leaves printing evaluations to the caller. The metrics `on_step` gets are
    numbers at log, evaluation and checkpoint steps and at the first and last; at other steps
    the model's metrics and `grad_norm` are still device tensors (see `_Readback`). `watch`:
    (key, "max" | "min") of the evaluations `cfg.early_stopping` follows (`EarlyStop`)."""
    device = torch.device(device)
    stepper = stepper or TorchStepper(model, cfg, total_steps)
    _prepare(model, cfg)
    stream = _cycle(batches)
    meter = _Meter(getattr(model, "flops_per_token", None), peak_flops, start_step, total_steps)
    readback = _Readback(cfg, start_step + 1, total_steps, evaluate is not None, name)
    result = FitResult()
    stopper = EarlyStop(cfg.early_stopping, watch) if cfg.early_stopping and watch else None
    model.train()
    for step in range(start_step + 1, total_steps + 1):
        sums = _accumulate(model, stream, stepper, cfg, device, meter)
        metrics = _optimizer_step(step, sums, stepper, meter)
        readback.add(step, metrics, list(sums))
        if step % cfg.log_every == 0 or step == total_steps:
            metrics.update(meter.window(step))
            if log:
                log(progress_line(name, step, total_steps, metrics))
        if evaluate is not None and (step % cfg.eval_every == 0 or step == total_steps):
            ev = _evaluate(model, evaluate, cfg, device, step, log if log_evals else None, name)
            result.evals.append(ev)
            metrics.update({k: v for k, v in ev.items() if k != "step"})
            if on_eval:
                on_eval(step, ev)
            if _stops_after(stopper, ev, step < total_steps, device, log, name):
                metrics["early_stop"], result.stopped_early_at = 1, step
        result.history.append(metrics)
        if on_step:
            on_step(step, metrics)
        if result.stopped_early_at:
            break
    result.steps = (result.stopped_early_at or total_steps) - start_step
    result.tokens, result.seconds = meter.total_tokens, time.perf_counter() - meter.t_start
    return result


def _optimizer_step(step: int, sums: dict, stepper, meter: _Meter) -> dict:
    """The optimizer step, and its metrics: the model's (over the micro-batches), lr, tokens,
    grad norm."""
    grad_norm = stepper.step()  # first: the lr shown is the one after this step's update
    metrics = {"step": step, **sums, "lr": stepper.lr, "tokens": meter.total_tokens}
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    return metrics
