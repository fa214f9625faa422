"""The training loop: accumulation, warmup + decay, clipping, autocast, evaluation, progress.

It is plain single-process PyTorch. Distribution is someone else's job: a Ray Train worker
passes its own batch iterator and, with DeepSpeed, a `Stepper` that calls the engine; the loop
itself does not change.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lmplatform.train.config import TrainConfig
from lmplatform.train.perf import format_eta


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

    def step(self) -> float | None:
        norm = None
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.clip:
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip))
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


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def count_tokens(batch: dict) -> int:
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
    name: str = "train",
) -> FitResult:
    """Run optimizer steps `start_step + 1 … total_steps`, each over `grad_accum_steps` batches.

    `batches` is any iterator of dicts of tensors (cycled when exhausted); the model returns a
    dict with `loss` and any scalar metrics (mlm_acc, nsp_acc, ppl…), which are averaged over
    the micro-batches and logged. `on_step` / `on_eval` let a caller report or checkpoint.
    """
    device = torch.device(device)
    stepper = stepper or TorchStepper(model, cfg, total_steps)
    flops_per_token = getattr(model, "flops_per_token", None)
    result = FitResult()
    it: Iterator = iter(batches)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(batches)  # next epoch
            return next(it)

    model.train()
    t_start = time.perf_counter()
    window_t, window_tokens, window_flops, window_data = t_start, 0, 0.0, 0.0
    for step in range(start_step + 1, total_steps + 1):
        sums: dict[str, float] = {}
        for _ in range(cfg.grad_accum_steps):
            t_data = time.perf_counter()
            batch = to_device(next_batch(), device)
            window_data += time.perf_counter() - t_data  # input-pipeline stalls, shown as data_wait
            with autocast(cfg.precision, device):
                out = model(**batch)
            stepper.backward(out["loss"] / cfg.grad_accum_steps)
            tokens = count_tokens(batch)
            window_tokens += tokens
            result.tokens += tokens
            if flops_per_token is not None:
                window_flops += flops_per_token(batch["input_ids"].shape[1]) * tokens
            for k, v in out.items():
                if isinstance(v, torch.Tensor) and v.dim() == 0:
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum_steps
        grad_norm = stepper.step()
        metrics = {"step": step, **sums, "lr": stepper.lr, "tokens": result.tokens}
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm
        if not all(math.isfinite(v) for v in sums.values()):
            raise FloatingPointError(f"{name}: non-finite loss at step {step}: {sums}")
        if step % cfg.log_every == 0 or step == total_steps:
            now = time.perf_counter()
            dt = max(now - window_t, 1e-9)
            metrics["tokens_per_s"] = window_tokens / dt
            metrics["data_wait"] = window_data / dt  # fraction of the window spent waiting for data
            if peak_flops and window_flops:
                metrics["mfu"] = window_flops / dt / peak_flops
            done = step - start_step
            eta = (now - t_start) / done * (total_steps - step)
            if log:
                shown = " | ".join(
                    f"{k} {v:.4g}"
                    for k, v in metrics.items()
                    if k
                    not in (
                        "step",
                        "lr",
                        "tokens",
                        "tokens_per_s",
                        "mfu",
                        "predicted_tokens",
                        "data_wait",
                    )
                )
                mfu = f" | mfu {metrics['mfu']:.1%}" if "mfu" in metrics else ""
                log(
                    f"[{name}] step {step}/{total_steps} | {shown} | lr {stepper.lr:.3g}"
                    f" | {metrics['tokens_per_s']:,.0f} tok/s{mfu} | data wait {metrics['data_wait']:.0%}"
                    f" | eta {format_eta(eta)}"
                )
            window_t, window_tokens, window_flops, window_data = now, 0, 0.0, 0.0
        if evaluate is not None and (step % cfg.eval_every == 0 or step == total_steps):
            model.eval()
            with torch.no_grad(), autocast(cfg.precision, device):
                ev = {"step": step, **evaluate(model)}
            model.train()
            result.evals.append(ev)
            metrics.update({k: v for k, v in ev.items() if k != "step"})
            if log:
                log(
                    f"[{name}] eval at step {step}: "
                    + ", ".join(
                        f"{k} {v:.4g}"
                        for k, v in ev.items()
                        if k != "step" and isinstance(v, (int, float))
                    )
                )
            if on_eval:
                on_eval(step, ev)
        result.history.append(metrics)
        if on_step:
            on_step(step, metrics)
    result.steps = total_steps - start_step
    result.seconds = time.perf_counter() - t_start
    return result
