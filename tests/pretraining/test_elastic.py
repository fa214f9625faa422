"""Elastic pretraining: (min 1, max 2) workers start with the one that fits and grow when a node joins."""

import json
import os
import subprocess
import sys

from conftest import ROOT

CONFIG = ROOT / "jobs" / "configs" / "pretrain" / "bert-debug.yaml"


def test_elastic_run_starts_small_and_grows_when_a_node_joins(tmp_path, sample_dir):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "scripts" / "elastic_run.py"),
            str(tmp_path),
            str(CONFIG),
            "name=elastic",
            f"output_dir={tmp_path}",
            f"registry={tmp_path}/registry",
            "train.max_steps=400",
            "train.log_every=5",
            "train.checkpoint_every=20",
            "scaling.min_workers=1",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=0.5",
            "scaling.resize_check_s=2",
            'scaling.resources_per_worker={"slot": 1}',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [
        json.loads(x) for x in (tmp_path / "elastic" / "metrics.jsonl").read_text().splitlines()
    ]
    seen = [(r["step"], r["workers"]) for r in rows]
    assert rows[0]["workers"] == 1, seen  # started with what fitted
    grown = next((i for i, r in enumerate(rows) if r["workers"] == 2), None)
    assert grown is not None, (seen, proc.stdout[-3000:])
    resumed_at = rows[grown]["step"] - 1
    assert resumed_at >= 20 and resumed_at % 20 == 0, seen  # from a checkpoint, not step 0
    assert rows[grown - 1]["step"] - resumed_at <= 20, seen  # at most one interval repeated
    assert "resized 1 -> 2 workers" in proc.stdout + proc.stderr
    losses = [(r["step"], round(r["loss"], 2)) for r in rows]
    assert rows[grown]["loss"] < rows[0]["loss"] - 0.5, losses  # the weights came along
    assert rows[-1]["step"] == 400 and rows[-1]["workers"] == 2
