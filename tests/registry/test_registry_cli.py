"""`lmplatform-registry`: list, show, export --hf, promote, rollback and gc on a tiny registry."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lmplatform.cli.registry import main

VALUES = {"v0001": 0.70, "v0002": 0.80, "v0003": 0.75}


@pytest.fixture
def reg_root(tmp_path, sample_dir):
    from lmplatform.models.bert.model import BertConfig
    from lmplatform.models.io import save_pretrained
    from lmplatform.models.tasks import TaskModel, build_encoder, build_pretraining_model
    from lmplatform.registry.store import Registry
    from lmplatform.tokenization import TokenizerConfig, train_tokenizer

    lines = (sample_dir / "corpus" / "train.txt").read_text().splitlines()[:2000]
    tok = train_tokenizer(TokenizerConfig(vocab_size=500), iter([lines]), tmp_path / "tok")
    cfg = BertConfig(size="debug", vocab_size=500, max_seq_len=64)
    reg = Registry(tmp_path / "registry")
    torch.manual_seed(0)
    save_pretrained(build_pretraining_model(cfg), tmp_path / "p", tokenizer=tok)
    reg.publish("pretrained", "tiny", tmp_path / "p", {"kind": "pretrained", "metrics": {}})
    for i, value in enumerate(VALUES.values()):
        model = TaskModel(build_encoder(cfg), "classification", 2)
        labels = ["negative", "positive"]
        save_pretrained(model, tmp_path / f"t{i}", tokenizer=tok, extra={"labels": labels})
        v = reg.publish(
            "tasks",
            "mood",
            tmp_path / f"t{i}",
            {"kind": "task", "metric": "accuracy", "value": value, "parent": "tiny@v0001"},
        )
        reg.promote("mood", v)  # v0001, then v0002 (better); v0003 does not beat v0002
    return tmp_path / "registry"


def _cli(capsys, root, *args) -> tuple[int, str, str]:
    try:
        main(["--registry", str(root), *args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_and_show(reg_root, capsys):
    code, out, _ = _cli(capsys, reg_root, "list")
    assert code == 0
    rows = {tuple(line.split()[:3]) for line in out.splitlines()}
    assert ("tasks", "mood", "v0002") in {r[:3] for r in rows}
    assert "v0002 *" in out and "0.8000" in out and "tiny@v0001" in out
    assert ("pretrained", "tiny", "v0001") in rows

    code, out, _ = _cli(capsys, reg_root, "show", "mood@best")
    assert code == 0 and "tasks/mood@v0002" in out and "(the promoted best)" in out
    assert "accuracy = 0.8" in out and "(replaced v0001)" in out
    code, out, _ = _cli(capsys, reg_root, "show", "tasks/mood@v0001", "--json")
    meta = json.loads(out)
    assert meta["value"] == 0.70 and meta["head"]["type"] == "classification"

    code, _, err = _cli(capsys, reg_root, "show", "nope")
    assert code == 2 and err.startswith("error: no model or task 'nope'")
    code, _, err = _cli(capsys, reg_root, "show", "mood@v0042")
    assert code == 2 and "has no version 'v0042'" in err


def test_rollback_is_refused_when_worse_unless_forced_and_promote_compares(reg_root, capsys):
    from lmplatform.registry.store import Registry

    reg = Registry(reg_root)
    code, _, err = _cli(capsys, reg_root, "rollback", "mood")  # -> v0001, which scores 0.70
    assert code == 2 and "below the current best v0002" in err and "--force" in err
    assert reg.best("mood") == "v0002"
    code, out, _ = _cli(capsys, reg_root, "rollback", "mood", "--force")
    assert code == 0 and "v0002 -> v0001" in out
    assert reg.best("mood") == "v0001"
    assert reg.promotions("mood")[-1]["note"] == "rollback"

    code, out, _ = _cli(capsys, reg_root, "promote", "mood@v0003")  # 0.75 beats 0.70
    assert code == 0 and reg.best("mood") == "v0003"
    code, out, _ = _cli(capsys, reg_root, "promote", "mood@v0001")  # 0.70 does not
    assert code == 1 and "not promoted" in out and reg.best("mood") == "v0003"
    code, out, _ = _cli(capsys, reg_root, "rollback", "mood", "--to", "v0002")  # better: allowed
    assert code == 0 and reg.best("mood") == "v0002"


def test_export_hf_loads_in_a_transformers_pipeline(reg_root, tmp_path, capsys):
    import transformers

    code, out, _ = _cli(capsys, reg_root, "export", "mood@best", "--hf", str(tmp_path / "hf"))
    assert code == 0 and "BertForSequenceClassification" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"))
    assert pipe("a fine film")[0]["label"] in {"negative", "positive"}


def test_gc_removes_only_stale_incomplete_versions(reg_root, capsys):
    from lmplatform import storage
    from lmplatform.registry.store import Registry

    reg = Registry(reg_root)
    stale = storage.join(reg.uri, "tasks", "mood", "v0009", ".claim")
    storage.create_exclusive(stale, json.dumps({"pid": 1, "host": "gone", "t": 0}).encode())
    fresh = storage.join(reg.uri, "tasks", "mood", "v0010", ".claim")
    storage.create_exclusive(fresh, json.dumps({"pid": 1, "host": "busy", "t": 4e9}).encode())
    code, out, _ = _cli(capsys, reg_root, "gc", "--dry-run")
    assert code == 0 and "would remove tasks/mood@v0009" in out and "v0010" not in out
    assert storage.exists(stale)
    code, out, _ = _cli(capsys, reg_root, "gc")
    assert "removed tasks/mood@v0009" in out
    assert not storage.exists(stale) and storage.exists(fresh)
    assert reg.versions("tasks", "mood") == ["v0001", "v0002", "v0003"]  # complete ones stay


def test_console_scripts_are_installed():
    bin_dir = Path(sys.executable).parent
    for name in ("registry", "pretrain", "finetune", "pipeline", "deploy", "prepare"):
        script = bin_dir / f"lmplatform-{name}"
        assert script.is_file(), f"{script} missing: make setup installs the package"
    out = subprocess.run(
        [str(bin_dir / "lmplatform-registry"), "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "rollback" in out.stdout
    out = subprocess.run(
        [str(bin_dir / "lmplatform-finetune"), "--config", "/nonexistent.yaml"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.startswith("error:")
