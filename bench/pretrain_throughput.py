"""Pretraining throughput: our BERT vs Hugging Face `BertForPreTraining`, side by side, one process.

Same sizes for both (default BERT `mini`: 4 layers, hidden 256, 4 heads, FFN 1024; `--size base`:
BERT-base; vocab 30,522; seq 128; batch 32; 15 % of tokens predicted), the same fused AdamW step,
each at its best setting on this machine: bf16 autocast for both (`--fp32` also times fp32),
Hugging Face's best of `eager` and `sdpa` attention, ours eager and `torch.compile`d. Runs are
interleaved (A B A B …) so that machine noise hits both alike; each figure is the median of its
repeats. `--device cuda` runs the same on a GPU (batches on the device before the clock starts).

MFU counts the FLOPs a training step needs (6 x non-embedding parameters per token, attention,
and the vocabulary projection at the predicted positions only) against a bf16 matmul peak
measured in this same run on the same device. `--profile` prints where one step of ours spends
its time (torch.profiler, self time by op, top 20), which kernel attention took and the page
faults per step. Both sides run with malloc keeping freed memory (`train/perf.keep_freed_memory`,
as our training loop does; `--default-malloc` leaves glibc's defaults).

    .venv/bin/python bench/pretrain_throughput.py [--steps 20] [--repeats 3] [--no-compile]
    .venv/bin/python bench/pretrain_throughput.py --profile

Last line: `ratio_vs_hf=<ours tokens/s over HF's> mfu=<ours>`.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lmplatform.models import BertConfig  # noqa: E402
from lmplatform.models.bert.model import PRESETS, BertForPretraining  # noqa: E402
from lmplatform.models.bert.pretraining import mlm_targets  # noqa: E402
from lmplatform.train.perf import keep_freed_memory, matmul_peak_flops  # noqa: E402

VOCAB, SEQ = 30522, 128


def make_batch(seed: int, batch: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, SEQ), generator=g)
    labels = torch.full_like(ids, -100)
    sel = torch.rand(batch, SEQ, generator=g) < 0.15
    labels[sel] = ids[sel]
    types = torch.zeros_like(ids)
    types[:, SEQ // 2 :] = 1
    # no attention mask: nothing is padded, and our collators leave the mask out then
    out = {
        "input_ids": ids,
        "token_type_ids": types,
        "labels": labels,  # Hugging Face's form of the targets
        "next_sentence_label": torch.randint(0, 2, (batch,), generator=g),
        **mlm_targets(labels),  # ours, as our collator hands them over
    }
    return {k: v.to(device) for k, v in out.items()}


OURS = ("input_ids", "token_type_ids", "next_sentence_label", "mlm_positions", "mlm_labels")
HF = ("input_ids", "token_type_ids", "labels", "next_sentence_label")


def ours(size: str, compile_mode: str | None, device: str):
    torch.manual_seed(0)
    model = BertForPretraining(BertConfig(size=size, vocab_size=VOCAB, dropout=0.1)).to(device)
    # static shapes: the number of predicted tokens differs per batch (a multiple of 64), and
    # torch 2.11's dynamic-shape trace of the fused cross-entropy fails (dynamo AssertionError);
    # each new count compiles once instead
    fwd = model if compile_mode is None else torch.compile(model, mode=compile_mode, dynamic=False)

    def step(batch):
        return fwd(**{k: batch[k] for k in OURS})["loss"]

    return model, step


def hf(size: str, attn: str, device: str):
    import transformers

    transformers.logging.set_verbosity_error()
    p = PRESETS[size]
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=p["hidden_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        intermediate_size=p["intermediate_size"],
        max_position_embeddings=512,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(cfg).to(device)

    def step(batch):
        return model(**{k: batch[k] for k in HF}).loss

    return model, step


def runner(model, step, precision: str, device: str):
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, fused=True
    )  # as our loop (and HF's adamw_torch_fused)
    model.train()
    kind = torch.device(device).type
    ctx = (
        (lambda: torch.autocast(kind, dtype=torch.bfloat16))
        if precision == "bf16"
        else contextlib.nullcontext
    )
    sync = torch.cuda.synchronize if kind == "cuda" else (lambda: None)

    def run(batches):
        sync()
        t = time.perf_counter()
        for b in batches:
            with ctx():
                loss = step(b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t

    return run


def build_variants(args) -> dict:
    variants = {}
    for prec in ("bf16", "fp32") if args.fp32 else ("bf16",):
        variants[f"ours/eager/{prec}"] = runner(
            *ours(args.size, None, args.device), prec, args.device
        )
        for mode in [] if args.no_compile else args.compile_modes.split(","):
            name = "compile" if mode == "default" else f"compile-{mode}"
            variants[f"ours/{name}/{prec}"] = runner(
                *ours(args.size, mode, args.device), prec, args.device
            )
        for attn in ("eager", "sdpa"):
            variants[f"hf/{attn}/{prec}"] = runner(
                *hf(args.size, attn, args.device), prec, args.device
            )
    return variants


def time_variants(variants: dict, batches: list, args) -> dict[str, float]:
    for name, run in list(variants.items()):  # warm up (and compile) outside the timed runs
        t = time.perf_counter()
        try:
            run(batches[: args.warmup])
        except Exception as e:  # a variant that cannot run here is reported, not fatal
            print(f"  {name}: failed in warmup: {type(e).__name__}: {str(e)[:300]}", flush=True)
            print("    " + traceback.format_exc()[-1500:].replace("\n", "\n    "), flush=True)
            del variants[name]
            continue
        print(f"  warmup {name}: {time.perf_counter() - t:.1f}s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            times[name].append(run(batches))
    tokens = args.batch * SEQ * args.steps
    return {n: tokens / statistics.median(ts) for n, ts in times.items()}


def attention_kernels(prof) -> str:
    """Which attention kernel a profiled step ran (flash, memory-efficient, cuDNN or math)."""
    names = {e.key for e in prof.key_averages()}
    picked = [
        n
        for n in sorted(names)
        if "attention" in n.lower()
        and ("flash" in n.lower() or "efficient" in n.lower() or "cudnn" in n.lower())
    ]
    return ", ".join(picked) or "math (no fused attention kernel in the profile)"


def profile(args, batch: dict) -> None:
    """One warmed-up step of ours under torch.profiler: self time by op, top 20."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run = runner(*ours(args.size, None, args.device), "bf16", args.device)
    run([batch] * 3)
    acts = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if args.device.startswith("cuda") else []
    )
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch_profile(activities=acts) as prof:
        run([batch] * 3)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 3
    key = "self_device_time_total" if args.device.startswith("cuda") else "self_cpu_time_total"
    print(f"profile of 3 steps of ours/eager/bf16 on {args.device}, self time by op ({key}):")
    print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))
    print(f"attention kernel: {attention_kernels(prof)}")
    print(f"page faults per step: {faults:,.0f}")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", default="mini", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile variant of ours"
    )
    p.add_argument("--fp32", action="store_true", help="also time fp32 (slower than bf16 here)")
    p.add_argument(
        "--compile-modes",
        default="default",
        help="torch.compile modes of ours, comma-separated (default, max-autotune-no-cudagraphs, "
        "reduce-overhead: CUDA graphs)",
    )
    p.add_argument("--profile", action="store_true", help="profile one step of ours, then stop")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc settings as they are (train/perf.keep_freed_memory off)",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")
    # process-wide, so both sides run with it (`--default-malloc`: glibc's defaults, as before)
    kept = False if args.default_malloc else keep_freed_memory()
    torch.manual_seed(0)
    batches = [make_batch(i, args.batch, args.device) for i in range(args.steps)]
    print(
        f"torch {torch.__version__} on {args.device}"
        f" ({torch.cuda.get_device_name() if args.device.startswith('cuda') else f'{torch.get_num_threads()} threads'});"
        f" BERT {args.size}, batch {args.batch} x seq {SEQ}, vocab {VOCAB};"
        f" malloc {'keeps freed memory' if kept else 'glibc defaults'}"
    )
    if args.profile:
        return profile(args, batches[0])
    rates = time_variants(build_variants(args), batches, args)
    for n, v in sorted(rates.items(), key=lambda kv: -kv[1]):
        print(f"  {n:<22} {v:>12,.0f} tokens/s  (median of {args.repeats} x {args.steps} steps)")
    best_ours = max((n for n in rates if n.startswith("ours")), key=rates.get)
    best_hf = max((n for n in rates if n.startswith("hf")), key=rates.get)
    n = 8192 if args.device.startswith("cuda") else 2048  # a GPU needs a large product to fill it
    peak = matmul_peak_flops(torch.bfloat16, args.device, n=n)
    flops_per_token = BertForPretraining(
        BertConfig(size=args.size, vocab_size=VOCAB)
    ).flops_per_token(SEQ)
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
