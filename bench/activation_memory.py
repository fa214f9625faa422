"""Activation checkpointing: the activation memory it saves at a long sequence, and what the
recompute costs, side by side in one process.

For each family (BERT with masked-LM labels, GPT; `--size`, default `mini`), batch `--batch` x
`--seq` tokens, training mode: the bytes of every tensor the forward keeps for the backward
(counted with autograd's saved-tensor hooks: the activation memory a step holds at its peak,
independent of the allocator) and the seconds of a forward + backward (median of `--repeats`,
interleaved), with `train.activation_checkpointing` off and on. On a GPU (`--device cuda`) it
also reads the CUDA allocator's peak.

    .venv/bin/python bench/activation_memory.py [--seq 512] [--batch 8] [--device cpu] [--size mini]

Last line: `<family>_kept_ratio=<on over off> <family>_time_ratio=<on over off>` per family.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lmplatform.models import BertConfig, GPTConfig  # noqa: E402
from lmplatform.models.layers import set_activation_checkpointing  # noqa: E402
from lmplatform.models.tasks import build_pretraining_model  # noqa: E402


def step(model, batch: dict, device: str) -> tuple[int, float, int]:
    """(bytes kept for the backward, seconds of forward + backward, CUDA peak bytes or 0)."""
    kept = []
    pack = lambda t: kept.append(t.numel() * t.element_size()) or t  # noqa: E731
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch)["loss"]
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return sum(kept), seconds, peak


def measure(family: str, cfg, args) -> dict:
    torch.manual_seed(0)
    model = build_pretraining_model(cfg).to(args.device).train()
    ids = torch.randint(5, cfg.vocab_size, (args.batch, args.seq), device=args.device)
    batch = {"input_ids": ids}
    if family == "bert":
        labels = torch.full_like(ids, -100)
        labels[:, ::7] = ids[:, ::7]  # ~15 % predicted
        batch["labels"] = labels
    runs: dict[bool, list] = {False: [], True: []}
    for _ in range(args.repeats + 1):  # the first of each is a warm-up
        for on in (False, True):
            set_activation_checkpointing(model, on)
            runs[on].append(step(model, batch, args.device))
    out = {}
    for on, rs in runs.items():
        rs = rs[1:]
        out[on] = {
            "kept": rs[0][0],
            "seconds": statistics.median(r[1] for r in rs),
            "peak": max(r[2] for r in rs),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="mini", choices=["debug", "mini", "small", "base"])
    args = p.parse_args()
    families = {
        "bert": BertConfig(size=args.size, vocab_size=8000, max_seq_len=args.seq),
        "gpt": GPTConfig(size=args.size, vocab_size=8000, max_seq_len=args.seq),
    }
    print(f"batch {args.batch} x {args.seq} tokens, {args.device}, torch {torch.__version__}")
    print(
        f"{'family':>7} {'checkpointing':>13} {'kept MiB':>9} {'step s':>7} {'CUDA peak MiB':>13}"
    )
    last = []
    for family, cfg in families.items():
        r = measure(family, cfg, args)
        for on in (False, True):
            x = r[on]
            print(
                f"{family:>7} {'on' if on else 'off':>13} {x['kept'] / 2**20:>9.1f} "
                f"{x['seconds']:>7.3f} {x['peak'] / 2**20:>13.1f}",
                flush=True,
            )
        last.append(f"{family}_kept_ratio={r[True]['kept'] / r[False]['kept']:.3f}")
        last.append(f"{family}_time_ratio={r[True]['seconds'] / r[False]['seconds']:.2f}")
    print(" ".join(last))


if __name__ == "__main__":
    main()
