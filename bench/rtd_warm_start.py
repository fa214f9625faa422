"""Why ELECTRA loses at a small budget: does its discriminator learn replaced-token detection
from a cold start, and from an encoder that MLM already trained?

The generator is taken out of the question: each masked position gets another masked token of
the same batch (a unigram sample, what an untrained generator draws), and only the
discriminator trains (AdamW, its loss alone). Two starts, side by side in one run, same batches:
`cold` (random weights, as an ELECTRA run begins) and `warm` (the encoder of a BERT registry
version, as after MLM pretraining). A discriminator that learned nothing sits at the entropy of
the replaced share (the prior); one that spots replacements goes below it.

    .venv/bin/python bench/rtd_warm_start.py --pretrained registry/pretrained/bert-shared-cpu/v0001

(`make setup && .venv/bin/python jobs/pretrain.py --config
jobs/configs/pretrain/bert-shared-cpu.yaml` registers that version.) Last line:
`cold_rtd_over_prior=<..> warm_rtd_over_prior=<..>` over the last 50 steps.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from lmplatform.models import ElectraConfig  # noqa: E402
from lmplatform.models.families import objective_of  # noqa: E402
from lmplatform.models.io import from_pretrained  # noqa: E402
from lmplatform.models.objective import ExamplesConfig  # noqa: E402
from lmplatform.models.tasks import build_pretraining_model  # noqa: E402
from lmplatform.pretraining.data import batch_iterator, build_examples_local  # noqa: E402


def unigram_step(model, batch: dict) -> tuple[torch.Tensor, float]:
    """The discriminator's loss on the batch with its masked tokens shuffled among themselves,
    and the share of tokens that differ from the original."""
    targets, positions = batch["mlm_labels"], batch["mlm_positions"]
    real = (targets != -100).nonzero().flatten()
    shuffled = targets.clone()
    shuffled[real] = targets[real[torch.randperm(len(real))]]
    corrupted = model._corrupt(batch["input_ids"], positions, targets, shuffled)
    out: dict = {}
    original = batch["original_ids"]
    loss = model._discriminate(corrupted, original, batch.get("attention_mask"), None, out)
    return loss, float(out["replaced"])


def train(model, batches, steps: int, lr: float, label: str) -> list[tuple[float, float]]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    seen = []
    for step in range(1, steps + 1):
        loss, p = unigram_step(model, next(batches))
        loss.backward()
        opt.step()
        opt.zero_grad()
        prior = -(p * math.log(p) + (1 - p) * math.log(1 - p))
        seen.append((float(loss.detach()), prior))
        if step % 50 == 0:
            recent = seen[-50:]
            print(
                f"{label} step {step}: rtd_loss {sum(x for x, _ in recent) / 50:.3f}, "
                f"prior {sum(y for _, y in recent) / 50:.3f}",
                flush=True,
            )
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", required=True, help="a BERT registry version folder")
    ap.add_argument(
        "--corpus", default=str(ROOT.parent / "shared/data/corpus/wikitext-2-valid.txt")
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    src = Path(args.pretrained)
    if not (src / "tokenizer.json").is_file():
        sys.exit(f"{src} is not a registry version (no tokenizer.json): see this script's help")
    encoder = from_pretrained(src).bert
    tokenizer = (src / "tokenizer.json").read_text()
    lines = [x.strip() for x in open(args.corpus) if len(x.strip()) > 50 and x[:3] != " = "]
    examples = ExamplesConfig(max_seq_len=128, nsp=False)
    rows = build_examples_local(lines, "electra", tokenizer, examples)
    collate = objective_of("electra").collator(tokenizer, examples, 0)
    ratios = {}
    for label in ("cold", "warm"):
        torch.manual_seed(0)
        c = encoder.cfg
        shape = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        model = build_pretraining_model(
            ElectraConfig(max_seq_len=c.max_seq_len, **{k: getattr(c, k) for k in shape})
        )
        if label == "warm":
            model.electra.load_state_dict(encoder.state_dict())
        seen = train(model, batch_iterator(rows, 32, collate, seed=0), args.steps, args.lr, label)
        last = seen[-50:]
        ratios[label] = sum(x for x, _ in last) / sum(y for _, y in last)
    print(" ".join(f"{k}_rtd_over_prior={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
