"""A fine-tuning trial on a GPU as users run one: `jobs/finetune.py` (Ray Tune, one trial on the
GPU with bf16 autocast) on the sample sentiment task, promoted into a fresh registry that
`bench/serve_load.py --replica-gpus 1` then serves (bench/gpu_check.sh runs both).

The parent is built here, in seconds, so nothing has to be fetched: a WordPiece tokenizer trained
on the sample corpus and a BERT `mini` with random weights, published as
`pretrained/bert-gpu-check`. From random weights the sample's sentiment is still learnable
(its words carry it), so the trial's dev accuracy says whether training on the GPU worked.

    python3 bench/gpu_task_check.py [--out bench-out/task] [--device cuda] [--epochs 2]

Last line: `gpu_task_check: <task> dev accuracy <a> (checkpoint of step <n>; <s> s with Ray's
start), registry <path>`;
exit status 1 when the search or the promotion failed or accuracy stayed at chance (< 0.6).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

PARENT = "bert-gpu-check"
TASK = "sentiment-sample"


def build_parent(registry: Path, work: Path) -> None:
    """A tokenizer of the sample corpus and a random-weight BERT mini, published to `registry`."""
    import torch

    from lmplatform.data.sample import ensure_sample
    from lmplatform.models import BertConfig
    from lmplatform.models.io import save_pretrained
    from lmplatform.models.tasks import build_pretraining_model
    from lmplatform.registry.store import Registry
    from lmplatform.tokenization import TokenizerConfig, train_tokenizer

    lines = (ensure_sample() / "corpus" / "train.txt").read_text().splitlines()
    batches = (lines[i : i + 1000] for i in range(0, len(lines), 1000))
    tok = train_tokenizer(TokenizerConfig(kind="wordpiece", vocab_size=4000), batches, work / "tok")
    torch.manual_seed(0)
    model = build_pretraining_model(BertConfig(size="mini", vocab_size=4000, max_seq_len=128))
    save_pretrained(model, work / PARENT, tokenizer=tok)
    Registry(registry).publish("pretrained", PARENT, work / PARENT, {"kind": "pretrained"})


def finetune(registry: Path, out: Path, device: str, epochs: float) -> int:
    """jobs/finetune.py as a user runs it: one trial (FIFO, the config's fixed values)."""
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "finetune.py"),
        "--config",
        str(ROOT / "jobs" / "configs" / "tasks" / f"{TASK}.yaml"),
        "--force",
        f"parent={PARENT}",
        f"registry={registry}",
        f"output_dir={out / 'runs'}",
        "search.scheduler=fifo",
        "search.num_samples=1",
        "search.space={}",
        "train.precision=bf16",
        f"train.epochs={epochs}",
        f"scaling.use_gpu={str(device == 'cuda').lower()}",
    ]
    env = {
        **os.environ,
        # an empty entry would put the working folder on the path: only what is set
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT / "platform"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench-out" / "task"))
    p.add_argument("--device", default="cuda", help="cuda (cpu: a smoke test of this script)")
    p.add_argument("--epochs", type=float, default=2.0)
    args = p.parse_args()
    out = Path(args.out).resolve()
    registry = out / "registry"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build_parent(registry, out)
    print(f"parent {PARENT} built in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    if finetune(registry, out, args.device, args.epochs) != 0:
        print("gpu_task_check: jobs/finetune.py failed")
        return 1
    from lmplatform.registry.store import Registry

    reg = Registry(registry)
    version = reg.best(TASK)
    meta = reg.metadata("tasks", TASK, version)
    value = float(meta["value"])
    print(
        f"gpu_task_check: {TASK} dev accuracy {value:.3f} (checkpoint of step "
        f"{meta['search']['step']}; {time.perf_counter() - t0:.0f} s with Ray's start), "
        f"registry {registry}"
    )
    return 0 if value >= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
