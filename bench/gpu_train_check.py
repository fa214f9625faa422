"""The training loop on a GPU: every precision, plain PyTorch and DeepSpeed, loss must fall.

CI has no GPU, so this is the one place the CUDA paths run: `train/loop.fit` with the plain
`TorchStepper` (fp32, bf16 autocast, fp16 autocast with its GradScaler) and with DeepSpeed
(`DeepSpeedStepper`, ZeRO-0 and ZeRO-2, its `torch_autocast` section) on our BERT and GPT at
size `mini`. Each run cycles 8 fixed batches of a learnable text for 40 steps:
the check is that the loss is finite and falls below 0.8 of its first value. Also printed: tokens
per second and MFU as the loop measures them, against a bf16 matmul peak measured here.

    python3 bench/gpu_train_check.py [--steps 40] [--size mini] [--only bert/bf16/deepspeed-zero2]
    (part of bench/gpu_check.sh, which also runs BERT-base under ZeRO-2 in bf16 with it)

Last line: `gpu_train_check: N/M runs passed`; exit status 1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lmplatform.models import BertConfig, GPTConfig  # noqa: E402
from lmplatform.models.bert.model import BertForPretraining  # noqa: E402
from lmplatform.models.gpt.model import GPT  # noqa: E402
from lmplatform.train.config import ScalingConfig, TrainConfig  # noqa: E402
from lmplatform.train.loop import fit  # noqa: E402
from lmplatform.train.perf import matmul_peak_flops  # noqa: E402

VOCAB, SEQ, BATCH = 8192, 128, 32


def batches(family: str) -> list[dict]:
    """8 batches of a learnable text: each row walks one fixed successor rule over 512 token
    ids from its own random start (random tokens would leave nothing to learn in 40 steps);
    BERT's inputs show [MASK] (id 4) at the 15 % of positions it predicts."""
    g = torch.Generator().manual_seed(0)
    successor = torch.randperm(512, generator=g) + 5
    out = []
    for _ in range(8):
        ids = torch.empty(BATCH, SEQ, dtype=torch.long)
        ids[:, 0] = torch.randint(5, 517, (BATCH,), generator=g)
        for t in range(1, SEQ):
            ids[:, t] = successor[ids[:, t - 1] - 5]
        if family == "gpt":
            out.append({"input_ids": ids})
            continue
        sel = torch.rand(BATCH, SEQ, generator=g) < 0.15
        labels = torch.where(sel, ids, -100)
        types = torch.zeros_like(ids)
        types[:, SEQ // 2 :] = 1
        nsp = torch.randint(0, 2, (BATCH,), generator=g)
        inputs = torch.where(sel, 4, ids)
        out.append(
            dict(input_ids=inputs, token_type_ids=types, labels=labels, next_sentence_label=nsp)
        )
    return out


def model_for(family: str, size: str = "mini") -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gpt":
        return GPT(GPTConfig(size=size, vocab_size=VOCAB, max_seq_len=SEQ))
    return BertForPretraining(BertConfig(size=size, vocab_size=VOCAB))


def stepper_for(model, cfg: TrainConfig, zero: int | None, steps: int):
    """None: the plain loop's own stepper; a stage: DeepSpeed's engine (one process)."""
    if zero is None:
        return model, None
    from lmplatform.train.deepspeed_engine import DeepSpeedStepper

    scaling = ScalingConfig(use_gpu=True, zero_stage=zero)
    stepper = DeepSpeedStepper(model, cfg, scaling, 1, steps)
    return stepper.engine, stepper


def one_run(family, precision, zero, steps: int, peak: float, device: str, size: str) -> dict:
    cfg = TrainConfig(
        batch_size=BATCH, max_steps=steps, lr=1e-3, warmup_ratio=0.1, precision=precision,
        log_every=steps, eval_every=10**6, checkpoint_every=10**6,
    )  # fmt: skip
    model = model_for(family, size).to(device)
    model, stepper = stepper_for(model, cfg, zero, steps)
    t = time.perf_counter()
    res = fit(
        model, batches(family), cfg, total_steps=steps, stepper=stepper, device=device,
        peak_flops=peak, log=None,
    )  # fmt: skip
    first = float(res.history[0]["loss"])
    last = float(res.history[-1]["loss"])
    window = {k: v for k, v in res.history[-1].items() if k in ("tokens_per_s", "mfu")}
    ok = bool(torch.isfinite(torch.tensor(last))) and last < 0.8 * first
    return dict(first=first, last=last, seconds=time.perf_counter() - t, ok=ok, **window)


def init_one_process_group(device: str) -> None:
    """DeepSpeed wants a process group; one process on this machine."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0", WORLD_SIZE="1")
    os.environ.update(LOCAL_RANK="0")
    backend = "nccl" if device == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


def plan(with_deepspeed: bool, device: str) -> list[tuple[str, str, int | None]]:
    precisions = ("fp32", "bf16", "fp16") if device == "cuda" else ("fp32", "bf16")
    runs = [(f, p, None) for f in ("bert", "gpt") for p in precisions]
    if with_deepspeed:
        runs += [("bert", p, z) for z in (0, 2) for p in precisions[1:]]
        runs += [("gpt", "bf16", 2)]
    return runs


def run_name(family: str, precision: str, zero: int | None) -> str:
    return f"{family}/{precision}/" + ("plain" if zero is None else f"deepspeed-zero{zero}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="cuda", help="cuda (cpu: a smoke test of this script)")
    p.add_argument("--size", default="mini", choices=["debug", "mini", "small", "base"])
    p.add_argument(
        "--only", default=None, help="runs whose name starts so, e.g. bert/bf16/deepspeed-zero2"
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    cuda = args.device == "cuda"
    peak = matmul_peak_flops(torch.bfloat16, args.device, n=8192 if cuda else 2048)
    where = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"{where}: bf16 matmul peak {peak / 1e12:.1f} TFLOP/s measured")
    try:
        import deepspeed  # noqa: F401

        init_one_process_group(args.device)
        with_ds = True
    except Exception as e:  # reported: the DeepSpeed rows are then missing, not passed
        print(f"DeepSpeed unavailable here ({type(e).__name__}: {e}); plain loop only")
        with_ds = False
    runs = [(run_name(*r), *r) for r in plan(with_ds, args.device)]
    runs = [r for r in runs if r[0].startswith(args.only or "")]
    passed = 0
    for name, family, precision, zero in runs:
        try:
            r = one_run(family, precision, zero, args.steps, peak, args.device, args.size)
        except Exception:
            print(f"  {name:<28} FAILED\n{traceback.format_exc(limit=6)}", flush=True)
            continue
        passed += r["ok"]
        rate = f"{r.get('tokens_per_s', 0):>10,.0f} tok/s mfu {r.get('mfu', 0):.3f}"
        print(
            f"  {name:<28} loss {r['first']:.3f} -> {r['last']:.3f}  {rate}  "
            f"{r['seconds']:.1f}s  {'ok' if r['ok'] else 'LOSS DID NOT FALL'}",
            flush=True,
        )
    if with_ds:
        torch.distributed.destroy_process_group()
    print(f"gpu_train_check ({args.size}): {passed}/{len(runs)} runs passed")
    return 0 if runs and passed == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
