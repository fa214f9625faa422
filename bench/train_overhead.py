"""Ray Train overhead: one Ray Train worker vs the bare training loop, same steps, same run.

Both run our loop with the same DeepSpeed engine (ZeRO-0, fp32), model (bert-debug unless
overridden), batches of the same shards and seed; the Ray side adds what a real job pays for:
the TorchTrainer worker, Ray Data streaming its shard, per-interval `ray.train.report` and
checkpoints. The bare loop gets as many threads as the worker reserves CPUs (Ray sets a
worker's OMP/torch threads to its CPU count). Steady-state throughput (median tokens/s of the logging windows after warm-up)
is compared, so start-up costs (worker launch, imports) are reported separately.

    .venv/bin/python bench/train_overhead.py [--config …] [--steps 80] [key=value …]

Last line: `ray_overhead=<bare tokens/s over Ray's, minus 1>`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from lmplatform import storage  # noqa: E402
from lmplatform.config import load_config  # noqa: E402
from lmplatform.pretraining.config import PretrainJobConfig  # noqa: E402


def bare(job: PretrainJobConfig, prepared) -> list[float]:
    import deepspeed
    import torch

    from lmplatform import storage
    from lmplatform.models.tasks import build_pretraining_model
    from lmplatform.pretraining.data import batch_iterator, shard_files
    from lmplatform.train.deepspeed_engine import DeepSpeedStepper
    from lmplatform.train.loop import fit

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    # Ray gives a worker as many threads as CPUs it reserves: give the bare loop the same
    torch.set_num_threads(max(1, int(job.scaling.cpus_per_worker)))
    torch.manual_seed(job.train.seed)
    model = build_pretraining_model(
        job.model.model_copy(update={"vocab_size": prepared.vocab_size})
    )
    stepper = DeepSpeedStepper(model, job.train, job.scaling, 1, job.train.max_steps)
    rows = storage.read_parquet(shard_files(prepared.examples_dir)).to_pydict()
    collate = job.objective.collator(prepared.tokenizer_path.read_text(), job.examples, 0)
    res = fit(
        stepper.engine,
        batch_iterator(rows, job.train.batch_size, collate),
        job.train,
        total_steps=job.train.max_steps,
        stepper=stepper,
        log=None,
    )
    torch.distributed.destroy_process_group()
    return [h["tokens_per_s"] for h in res.history if "tokens_per_s" in h]


def main() -> None:
    from lmplatform.runtime import setup_process

    setup_process()  # before Ray or datasets is imported: loopback, token, console
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config",
        default=str(Path(__file__).resolve().parents[1] / "jobs/configs/pretrain/bert-debug.yaml"),
    )
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = tempfile.mkdtemp(prefix="overhead-")
    job = load_config(
        PretrainJobConfig,
        args.config,
        [
            f"output_dir={out}",
            f"registry={out}/registry",
            f"train.max_steps={args.steps}",
            "train.log_every=10",
            f"train.checkpoint_every={args.steps}",
            "train.eval_every=100000",
            "scaling.num_workers=1",
            "scaling.zero_stage=0",
            "scaling.cpus_per_worker=1",
            "train.precision=fp32",
            *args.overrides,
        ],
    )
    from lmplatform.pretraining.prepare import prepare
    from lmplatform.pretraining.run import run_pretraining
    from lmplatform.runtime import init_ray

    init_ray(quiet=True)
    prepared = prepare(job)
    t = time.time()
    bare_tps = bare(job, prepared)
    bare_wall = time.time() - t
    t = time.time()
    run_pretraining(job)
    ray_wall = time.time() - t
    ray_tps = [
        json.loads(line)["tokens_per_s"]
        for line in storage.read_text(storage.join(prepared.run_dir, "metrics.jsonl")).splitlines()
        if "tokens_per_s" in line
    ]
    b, r = statistics.median(bare_tps[1:]), statistics.median(ray_tps[1:])  # first window: warm-up
    print(
        f"{job.model.family}-{job.model.size}, {args.steps} steps, batch {job.train.batch_size} x seq {job.examples.max_seq_len}"
    )
    print(f"bare loop: {b:,.0f} tokens/s steady, {bare_wall:.1f}s wall")
    print(
        f"1 Ray Train worker: {r:,.0f} tokens/s steady, {ray_wall:.1f}s wall (start-up, Ray Data, reports, checkpoint)"
    )
    print(f"ray_overhead={b / r - 1:.3f}")


if __name__ == "__main__":
    main()
