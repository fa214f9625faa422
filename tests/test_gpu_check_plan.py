"""bench/gpu_check.sh's plan, checked on a CPU (CI has no GPU): `--dry-run` lists every part the
issue asks of it, fits them in 8 minutes with setup, and runs each script only as far as its
argument parsing (bench/plan_check.py), so a renamed flag fails here, not on a lent GPU."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_the_gpu_check_plan_fits_and_every_part_takes_its_arguments():
    bin_dir = str(Path(sys.executable).parent)  # `python3` in the script: this venv's
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(ROOT / "platform")}
    r = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    plan = [line.split() for line in r.stdout.splitlines() if line.startswith("plan ")]
    names = [p[1] for p in plan if p[3] == "s"]
    for needed in (
        "pretrain_base_zero2",  # BERT-base steps in bf16 under ZeRO-2, tokens/s and MFU
        "finetune_bf16",  # a fine-tuning trial with bf16 autocast
        "activation_memory",  # checkpointing on / off memory
        "serve_gpu",  # Serve on the GPU against plain FastAPI
    ):
        assert needed in names, r.stdout
    budget = re.fullmatch(r"plan: (\d+)s of (\d+)s .*", r.stdout.splitlines()[-1])
    assert budget and int(budget[1]) <= int(budget[2]) == 480, r.stdout

    # a flag the script does not take is caught by the same check
    bad = subprocess.run(
        [sys.executable, "bench/plan_check.py", "bench/activation_memory.py", "--sise", "base"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "--sise" in bad.stderr
