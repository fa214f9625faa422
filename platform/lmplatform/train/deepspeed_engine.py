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

from lmplatform.train.config import Precision, ScalingConfig, TrainConfig
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
        **precision_config(train.precision),
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


def precision_config(precision: Precision) -> dict:
    """The engine's precision: DeepSpeed's `torch_autocast` section, never its `bf16` / `fp16` ones.

    The engine enters `torch.autocast` itself, inside its forward, on its accelerator's device
    (deepspeed/runtime/torch_autocast.py, `autocast_if_enabled`), so it is the same on CPU and
    GPU, and it is what the plain-PyTorch path does (`loop.precision_context`): fp32 weights,
    gradients and accumulation, 16-bit matmuls. DeepSpeed's `bf16` / `fp16` modes instead cast
    the module's weights to 16 bits; the forward then ran bf16 LayerNorms and softmaxes, and it
    met our model code's autocast handling only on CPU, where DeepSpeed does not see an outer
    autocast (it checks CUDA's). fp16 gets a GradScaler from the engine (ZeRO-0) or its ZeRO
    optimizer. Cost: weights and gradients take fp32 memory (ZeRO partitions the optimizer
    state either way); ZeRO 1-3 still reduce `nn.Linear` gradients in 16 bits (DeepSpeed's
    `lower_precision_safe_modules` default), ZeRO-0 reduces them in fp32."""
    if precision == "fp32":
        return {}
    return {"torch_autocast": {"enabled": True, "dtype": precision}}


def engine_layout(ds_config: dict) -> str:
    """How a DeepSpeed engine of this config lays out its checkpoint's optimizer state: the ZeRO
    stage and the precision mode. An engine loads only a checkpoint of its own layout (another
    stage shards differently; DeepSpeed's `bf16` mode keeps its own fp32 master copy, and
    writes `bf16_zero_*` files), so a resume compares the two (`worker_parts.Resume`)."""
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    for mode in ("bf16", "fp16"):  # the 16-bit-weights modes this platform used before
        if ds_config.get(mode, {}).get("enabled"):
            return f"ZeRO-{stage}, {mode} weights"
    autocast = ds_config.get("torch_autocast", {})
    dtype = autocast.get("dtype", "bf16") if autocast.get("enabled") else None
    return f"ZeRO-{stage}, " + (f"{dtype} autocast" if dtype else "fp32")


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
            # the fused kernel (one pass over each parameter), as the plain loop's; the
            # default for-each one took several passes
            optimizer = torch.optim.AdamW(
                groups, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay, fused=True
            )

        self._lr_scale = groups[0].get("lr_scale", 1.0)
        # ZeRO-0 without DeepSpeed's 16-bit modes keeps no gradient norm (it clips and drops
        # it), so it is taken here, as the plain loop does, when clipping is on; under fp16
        # the gradients are still loss-scaled at that point, so none is shown
        self._own_norm = (
            scaling.zero_stage == 0 and train.precision != "fp16" and bool(train.clip_grad_norm)
        )
        self._norm = None

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
        if self._own_norm and self.engine.is_gradient_accumulation_boundary():
            # reduced across workers by now; the engine's step zeroes them
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            self._norm = torch.nn.utils.get_total_norm(grads)
        self.engine.step()

    def step(self) -> torch.Tensor | float | None:
        """The step's gradient norm, left where it is (a device tensor): the loop reads it
        back with the other metrics, at its next log step."""
        norm = self.engine.get_global_grad_norm()
        return self._norm if norm is None else norm

    @property
    def lr(self) -> float:
        """The peak-relative schedule's current rate (group 0's, undoing its layer scale)."""
        return self.engine.get_lr()[0] / self._lr_scale


def name_the_accelerator() -> None:
    """Tell DeepSpeed it runs on the CPU when no GPU is visible: left to detect it, it warns
    "Setting accelerator to CPU" in every process, every time."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
