"""One way to build Ray Train's `TorchTrainer`, for pretraining and multi-worker trials alike:
workers and their resources from `ScalingConfig` (elastic bounds included), NCCL on GPUs and
gloo on CPUs."""

from __future__ import annotations

from collections.abc import Callable

from lmplatform.train.config import ScalingConfig


def torch_trainer(
    loop: Callable[[dict], None],
    loop_config: dict,
    scaling: ScalingConfig,
    run_config,
    datasets: dict | None = None,
):
    import dataclasses

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from lmplatform import console

    # Ray Train's per-report, per-checkpoint and worker-group lines are INFO: off the console
    # unless LMPLATFORM_VERBOSE=1 (Ray Train's system log files under the session keep them)
    logging = ray.train.LoggingConfig(log_level=console.train_log_level())
    run_config = dataclasses.replace(run_config, logging_config=logging)

    workers = (
        (scaling.min_workers, scaling.num_workers) if scaling.min_workers else scaling.num_workers
    )
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            elastic_resize_monitor_interval_s=scaling.resize_check_s,
            use_gpu=scaling.use_gpu,
            resources_per_worker={**scaling.resources_per_worker, "CPU": scaling.cpus_per_worker},
        ),
        run_config=run_config,
        datasets=datasets or {},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
    )
