"""Pretraining throughput: our BERT vs Hugging Face `BertForPreTraining`, side by side, one process.

Same sizes for both (BERT `mini`: 4 layers, hidden 256, 4 heads, FFN 1024; vocab 30,522; seq 128;
batch 32; 15 % of tokens predicted), the same AdamW step, each at its best setting on this
machine: bf16 autocast for both (`--fp32` also times fp32), Hugging Face's best of `eager` and `sdpa`
attention, ours eager and `torch.compile`d. Runs are interleaved (A B A B …) so that machine
noise hits both alike; each figure is the median of its repeats.

MFU counts the FLOPs a training step needs (6 x non-embedding parameters per token, attention,
and the vocabulary projection at the predicted positions only) against a bf16 matmul peak
measured in this same run.

    .venv/bin/python bench/pretrain_throughput.py [--steps 20] [--repeats 3] [--no-compile]

Last line: `ratio_vs_hf=<ours tokens/s over HF's> mfu=<ours>`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lmplatform.models import BertConfig  # noqa: E402
from lmplatform.models.bert import BertForPretraining  # noqa: E402
from lmplatform.train.perf import matmul_peak_flops  # noqa: E402

VOCAB, SEQ, BATCH = 30522, 128, 32


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=g)
    labels = torch.full_like(ids, -100)
    sel = torch.rand(BATCH, SEQ, generator=g) < 0.15
    labels[sel] = ids[sel]
    types = torch.zeros_like(ids)
    types[:, SEQ // 2 :] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": types,
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (BATCH,), generator=g),
    }


def ours(compile_: bool):
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(size="mini", vocab_size=VOCAB, dropout=0.1))
    fwd = torch.compile(model) if compile_ else model

    def step(batch):
        return fwd(**batch)["loss"]

    return model, step


def hf(attn: str):
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(cfg)

    def step(batch):
        return model(**batch).loss

    return model, step


def runner(model, step, precision: str):
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, fused=True
    )  # as our loop (and HF's adamw_torch_fused)
    model.train()
    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    def run(batches):
        t = time.perf_counter()
        for b in batches:
            with ctx:
                loss = step(b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile variant of ours"
    )
    p.add_argument("--fp32", action="store_true", help="also time fp32 (slower than bf16 here)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    batches = [make_batch(i) for i in range(args.steps)]
    tokens = BATCH * SEQ * args.steps

    variants = {}
    for prec in ("bf16", "fp32") if args.fp32 else ("bf16",):
        variants[f"ours/eager/{prec}"] = runner(*ours(False), prec)
        if not args.no_compile:
            variants[f"ours/compile/{prec}"] = runner(*ours(True), prec)
        for attn in ("eager", "sdpa"):
            variants[f"hf/{attn}/{prec}"] = runner(*hf(attn), prec)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {BATCH} x seq {SEQ}, vocab {VOCAB}"
    )
    for name, run in variants.items():  # warm up (and compile) outside the timed runs
        t = time.perf_counter()
        run(batches[: args.warmup])
        print(f"  warmup {name}: {time.perf_counter() - t:.1f}s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            times[name].append(run(batches))
    rates = {n: tokens / statistics.median(ts) for n, ts in times.items()}
    for n, v in sorted(rates.items(), key=lambda kv: -kv[1]):
        print(f"  {n:<22} {v:>10,.0f} tokens/s  (median of {args.repeats} x {args.steps} steps)")

    best_ours = max((n for n in rates if n.startswith("ours")), key=rates.get)
    best_hf = max((n for n in rates if n.startswith("hf")), key=rates.get)
    peak = matmul_peak_flops(torch.bfloat16, "cpu")
    model = BertForPretraining(BertConfig(size="mini", vocab_size=VOCAB))
    flops_per_token = model.flops_per_token(SEQ)
    mfu = rates[best_ours] * flops_per_token / peak
    ratio = rates[best_ours] / rates[best_hf]
    print(
        f"best ours: {best_ours} {rates[best_ours]:,.0f} tok/s; best HF: {best_hf} {rates[best_hf]:,.0f} tok/s"
    )
    print(
        f"model FLOPs per token {flops_per_token / 1e6:.1f}M; measured bf16 matmul peak {peak / 1e12:.2f} TFLOP/s"
    )
    print(f"ratio_vs_hf={ratio:.2f} mfu={mfu:.3f}")


if __name__ == "__main__":
    main()
