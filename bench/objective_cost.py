"""What a pretraining step costs under each encoder objective: BERT (MLM + NSP) vs ELECTRA
(generator + discriminator), the same encoder, side by side in one process.

Same encoder for both (BERT's preset `--size`, default `mini`: 4 layers, hidden 256; vocab
8,000 as `bert-shared-cpu.yaml`; seq 128; batch 32; 15 % masked), bf16 autocast, fused AdamW,
the collator's masked batches; runs interleaved (A B A B …), each figure the median of its repeats.
The equal-budget comparison of the two objectives (`docs/pretraining.md`) divides the wall clock
by these step costs.

    .venv/bin/python bench/objective_cost.py [--steps 10] [--repeats 3] [--size mini]

Last line: `electra_step_over_bert=<ELECTRA's seconds per step over BERT's>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lmplatform.models import BertConfig, ElectraConfig  # noqa: E402
from lmplatform.models.bert.pretraining import BertCollator  # noqa: E402
from lmplatform.models.tasks import build_pretraining_model  # noqa: E402


def _batch(vocab: int, batch: int, seq: int, nsp: bool) -> dict:
    collate = BertCollator(pad_id=0, mask_id=4, special_ids=[0, 1, 2, 3, 4], vocab_size=vocab)
    g = torch.Generator().manual_seed(0)
    rows = [[2, *torch.randint(5, vocab, (seq - 2,), generator=g).tolist(), 3]] * batch
    return collate(
        {
            "input_ids": rows,
            "token_type_ids": [[0] * seq] * batch,
            "next_sentence_label": [i % 2 if nsp else -100 for i in range(batch)],
        }
    )


def _seconds_per_step(model, batch: dict, opt, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="mini", choices=("debug", "mini", "small", "base"))
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    vocab, seq = 8000, 128
    bert = BertConfig(size=a.size, vocab_size=vocab, max_seq_len=seq)
    # BERT's encoder of that size for both: ELECTRA's own `small` preset is another encoder
    # (12 layers, narrower embeddings), which would compare sizes, not objectives
    electra = ElectraConfig(**bert.model_dump(exclude={"family"}), embedding_size=None)
    sides = {}
    for name, cfg, nsp in (("bert", bert, True), ("electra", electra, False)):
        torch.manual_seed(0)
        model = build_pretraining_model(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        batch = _batch(vocab, a.batch, seq, nsp)
        _seconds_per_step(model, batch, opt, 2)  # warm-up
        sides[name] = (model, batch, opt, [])
    for _ in range(a.repeats):
        for model, batch, opt, times in sides.values():
            times.append(_seconds_per_step(model, batch, opt, a.steps))
    med = {k: statistics.median(v[3]) for k, v in sides.items()}
    for k, s in med.items():
        print(f"{k:8s} {s * 1000:7.1f} ms/step  {a.batch * seq / s:9,.0f} tokens/s")
    print(f"electra_step_over_bert={med['electra'] / med['bert']:.2f}")


if __name__ == "__main__":
    main()
