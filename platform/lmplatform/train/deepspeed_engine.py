"""DeepSpeed for the training loop: the config generated from ours, and a `Stepper` over the engine.

The DeepSpeed config is never written by hand: batch sizes, accumulation, precision, clipping
and world size come from `TrainConfig` / `ScalingConfig`, so they always agree.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lmplatform.train.config import ScalingConfig, TrainConfig
from lmplatform.train.loop import lr_lambda, param_groups


def deepspeed_config(train: TrainConfig, scaling: ScalingConfig, world_size: int) -> dict:
    """The DeepSpeed JSON config for these settings (see DeepSpeed's config-json docs)."""
    zero: dict = {"stage": scaling.zero_stage}
    if scaling.zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size=5e7)
    if scaling.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": scaling.use_gpu}
    if scaling.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": scaling.use_gpu}
    if scaling.zero_stage == 3:
        # consolidated 16-bit weights are not needed: we export fp32 from the checkpoint shards
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    cfg: dict = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.batch_size * train.grad_accum_steps * world_size,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "initial_scale_power": 16},
        "wall_clock_breakdown": False,
        "steps_per_print": 10**9,  # our loop prints progress
    }
    if train.clip_grad_norm:
        cfg["gradient_clipping"] = train.clip_grad_norm
    if scaling.offload_optimizer:
        # offloaded optimizer state needs DeepSpeed's own CPU Adam, built from the config
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": list(train.betas),
                "eps": 1e-8,
                "weight_decay": train.weight_decay,
            },
        }
    return cfg


def _checkpoint_classes() -> list:
    """The DeepSpeed classes its ZeRO checkpoints hold besides tensors and plain values (found
    with torch.serialization.get_unsafe_globals_in_checkpoint over stages 0-3, fp32 and bf16)."""
    name_the_accelerator()  # before DeepSpeed is imported
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextmanager
def weights_only_loads(where: str) -> Iterator[None]:
    """Every `torch.load` inside reads tensors, plain values and the allow-listed DeepSpeed
    classes only: DeepSpeed's own loads pass weights_only=False (pickle, which runs code from
    whoever can write the checkpoint folder); torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides
    that per call. Anything else in the files is refused, naming `where`."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_checkpoint_classes()):
            yield
    except pickle.UnpicklingError as e:
        why = str(e).split("\n\n")[1] if "\n\n" in str(e) else str(e)
        raise ValueError(
            f"{where}: refused, a DeepSpeed checkpoint file holds more than tensors and plain "
            f"values ({why.strip()[:300]})"
        ) from None
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


class DeepSpeedStepper:
    """The loop's `Stepper` on a DeepSpeed engine.

    The loop divides each micro-batch loss by `grad_accum_steps` itself, so the engine must not
    scale again (`scale_wrt_gas=False`); `engine.step()` runs after every micro-batch and only
    updates at the accumulation boundary, which is how DeepSpeed counts.
    """

    def __init__(
        self,
        model: nn.Module,
        train: TrainConfig,
        scaling: ScalingConfig,
        world_size: int,
        total_steps: int,
        groups: list[dict] | None = None,
    ):
        name_the_accelerator()
        import deepspeed

        config = deepspeed_config(train, scaling, world_size)
        optimizer = None
        groups = groups or param_groups(model, train.weight_decay)
        for g in groups:  # layer-wise decay scales each group's peak (and so its schedule)
            g["lr"] = train.lr * g.get("lr_scale", 1.0)
        if "optimizer" not in config:
            optimizer = torch.optim.AdamW(
                groups, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay
            )

        self._lr_scale = groups[0].get("lr_scale", 1.0)

        def scheduler(opt):
            return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train, total_steps))

        from lmplatform.console import library_output

        with library_output("DeepSpeed start"):  # it prints each communication op it builds
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model,
                model_parameters=groups if optimizer is None else None,
                optimizer=optimizer,
                lr_scheduler=scheduler,
                config=config,
            )

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def step(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    @property
    def lr(self) -> float:
        """The peak-relative schedule's current rate (group 0's, undoing its layer scale)."""
        return self.engine.get_lr()[0] / self._lr_scale


def name_the_accelerator() -> None:
    """Tell DeepSpeed it runs on the CPU when no GPU is visible: left to detect it, it warns
    "Setting accelerator to CPU" in every process, every time."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
