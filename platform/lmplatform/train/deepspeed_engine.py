"""DeepSpeed for the training loop: the config generated from ours, and a `Stepper` over the engine.

The DeepSpeed config is never written by hand: batch sizes, accumulation, precision, clipping
and world size come from `TrainConfig` / `ScalingConfig`, so they always agree.
"""

from __future__ import annotations

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
