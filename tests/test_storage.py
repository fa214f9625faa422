"""The storage layer and the registry on a real S3 API (moto on 127.0.0.1) and on local disk:
concurrent publishers and promoters, damaged files, corrupt metadata, bad names, the cache of
remote versions, data read from s3:// with the same bad-row reports, and preflight's data check."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, model_folder
from lmplatform import storage
from lmplatform.registry.store import Registry, RegistryError

RACE = ROOT / "tests" / "scripts" / "registry_race.py"


def _model(tmp_path: Path, payload: bytes = b"w" * 50_000) -> Path:
    return model_folder(tmp_path, payload)


def _meta(value: float, **extra) -> dict:
    return {
        "kind": "task",
        "metric": "accuracy",
        "value": value,
        "data_fingerprint": {"train": "t", "dev": "d"},
        **extra,
    }


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A registry root on local disk or in a fresh bucket on the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "registry")
    return request.getfixturevalue("s3_bucket") + "/registry"


def test_uris_keep_their_scheme_and_writes_are_whole(s3_bucket, tmp_path):
    assert storage.join("s3://b/x/", "runs", "demo") == "s3://b/x/runs/demo"
    assert storage.join(str(tmp_path), "a") == str(tmp_path / "a")
    assert storage.normalize("file:///tmp/x/") == "/tmp/x"
    uri = storage.join(s3_bucket, "deep/dir/f.json")
    storage.write_json(uri, {"a": 1})
    assert storage.read_json(uri) == {"a": 1} and storage.exists(uri)
    storage.create_exclusive(storage.join(s3_bucket, "once"), b"1")
    with pytest.raises(FileExistsError):
        storage.create_exclusive(storage.join(s3_bucket, "once"), b"2")
    assert storage.read_bytes(storage.join(s3_bucket, "once")) == b"1"
    # a mirror: write locally, push what changed, a second mirror continues the remote file
    m = storage.Mirror(storage.join(s3_bucket, "run"))
    (m.local / "metrics.jsonl").write_text('{"step": 1}\n')
    m.push()
    again = storage.Mirror(storage.join(s3_bucket, "run"), pull=("metrics.jsonl",))
    with open(again.local / "metrics.jsonl", "a") as f:
        f.write('{"step": 2}\n')
    again.push()
    assert storage.read_text(storage.join(s3_bucket, "run/metrics.jsonl")).count("step") == 2
    with pytest.raises(storage.StorageError, match="not a storage location|not installed"):
        storage.filesystem("nosuchscheme://x/y")


def test_concurrent_publishers_and_promoters_never_collide(root, tmp_path):
    """4 processes publish the same name at once, then promote with different values: 4 distinct
    complete versions, and best is the highest value whatever the order of arrival."""
    src = _model(tmp_path)
    values = [0.61, 0.93, 0.72, 0.85]
    start = time.time() + 4  # every process waits for the same instant, then races
    procs = [
        subprocess.Popen(
            [sys.executable, str(RACE), root, str(src), str(v), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in values
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    published = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    versions = [p["version"] for p in published]
    assert len(set(versions)) == 4, versions
    reg = Registry(root)
    assert reg.versions("tasks", "race") == sorted(versions)
    for p in published:  # each folder holds exactly its own model: files and checksums agree
        meta = reg.metadata("tasks", "race", p["version"])
        assert meta["value"] == p["value"]
        reg.local_path("tasks", "race", p["version"])  # verifies every file's sha256
    best = reg.best("race")
    assert reg.metadata("tasks", "race", best)["value"] == max(values)
    log = reg.promotions("race")
    assert [r["value"] for r in log] == sorted(r["value"] for r in log)  # only ever upwards


def test_damaged_versions_are_refused_and_skipped_others_keep_working(root, tmp_path, caplog):
    reg = Registry(root)
    good = reg.publish("tasks", "t", _model(tmp_path), _meta(0.8))
    assert reg.promote("t", good)[0]
    # a truncated weight file: the checksum names the file, on load
    bad = reg.publish("tasks", "t", _model(tmp_path, b"x" * 40_000), _meta(0.7))
    weights = storage.join(reg.location("tasks", "t", bad), "model.safetensors")
    storage.write_bytes(weights, b"x" * 1000)
    with pytest.raises(RegistryError, match=r"model\.safetensors does not match its checksum"):
        reg.local_path("tasks", "t", bad)
    # a corrupt metadata.json: that version disappears with a warning, the task still works
    broken = reg.publish("tasks", "t", _model(tmp_path), _meta(0.75))
    storage.write_bytes(
        storage.join(reg.location("tasks", "t", broken), "metadata.json"), b'{"trunc'
    )
    with caplog.at_level("WARNING", logger="lmplatform.registry.store"):
        assert reg.versions("tasks", "t") == [good, bad]
    assert "metadata.json is corrupt" in caplog.text
    with pytest.raises(RegistryError, match="metadata.json is corrupt"):
        reg.metadata("tasks", "t", broken)
    assert reg.resolve("tasks", "t@best") == ("t", good)
    # a corrupt promotion record: an error naming it, never skipped (had it been a rollback,
    # the record before it would be the model rolled away from); a forced promotion supersedes it
    nxt = reg.publish("tasks", "t", _model(tmp_path), _meta(0.9))
    assert reg.promote("t", nxt)[0] and reg.best("t") == nxt
    record = storage.join(root, "tasks", "t", "best", "00000002.json")
    storage.write_bytes(record, b"not json")
    with pytest.raises(RegistryError, match=r"promotion record .*00000002\.json .*unreadable"):
        reg.best("t")
    assert reg.promote("t", good, force=True)[0] and reg.best("t") == good
    # a NaN metric is refused at publish and at promotion
    with pytest.raises(RegistryError, match="non-finite value nan"):
        reg.publish("tasks", "t", _model(tmp_path), _meta(float("nan")))
    with pytest.raises(RegistryError, match="is not finite"):
        reg.promote("t", good, float("inf"))
    # names that would leave the registry are refused at every entry
    for call in (
        lambda: reg.publish("tasks", "../escape", _model(tmp_path), _meta(0.5)),
        lambda: reg.resolve("tasks", "../../etc@best"),
        lambda: reg.promote("t/../u", good),
        lambda: reg.local_path("tasks", "t", "../v0001"),
        lambda: reg.publish("tasks", "t", _model(tmp_path), _meta(0.5, parent="a/../../b@v0001")),
    ):
        with pytest.raises(ValueError, match="use letters, digits|expected v followed by"):
            call()


def test_promotion_across_metric_or_dev_set_needs_force(root, tmp_path):
    reg = Registry(root)
    a = reg.publish("tasks", "t", _model(tmp_path), _meta(0.8))
    reg.promote("t", a)
    other_dev = reg.publish(
        "tasks", "t", _model(tmp_path), {**_meta(0.9), "data_fingerprint": {"dev": "other"}}
    )
    with pytest.raises(RegistryError, match="dev-set fingerprint .* not comparable.*--force"):
        reg.promote("t", other_dev)
    other_metric = reg.publish("tasks", "t", _model(tmp_path), _meta(0.95, metric="macro_f1"))
    with pytest.raises(RegistryError, match="metric .* not comparable"):
        reg.promote("t", other_metric)
    assert reg.best("t") == a
    assert reg.promote("t", other_dev, force=True)[0] and reg.best("t") == other_dev


def test_cache_of_remote_versions_is_keyed_by_registry_and_content(s3_bucket, tmp_path):
    """Two registries holding the same kind/name/version with different weights: each serves
    its own (the old cache, keyed by name and version only, served the first one's)."""
    one, two = Registry(f"{s3_bucket}/one"), Registry(f"{s3_bucket}/two")
    v1 = one.publish("pretrained", "m", _model(tmp_path, b"1" * 1000), {"kind": "pretrained"})
    v2 = two.publish("pretrained", "m", _model(tmp_path, b"2" * 1000), {"kind": "pretrained"})
    assert v1 == v2 == "v0001"
    p1, p2 = one.local_path("pretrained", "m", v1), two.local_path("pretrained", "m", v2)
    assert p1 != p2
    assert (p1 / "model.safetensors").read_bytes() == b"1" * 1000
    assert (p2 / "model.safetensors").read_bytes() == b"2" * 1000
    assert one.local_path("pretrained", "m", v1) == p1  # cached: downloaded once


def test_task_data_from_s3_reports_bad_rows_like_local_files(s3_bucket, tmp_path):
    from lmplatform.data.sources import DataError, DataSource
    from lmplatform.tasks.data import load_labelled

    text = "sentence\tlabel\ngood one\t1\n\t0\nno label\t\nweird\t7\nfine\t0\ntoo\tmany\tcols\n"
    uri = f"{s3_bucket}/data/s.tsv"
    storage.write_text(uri, text)
    src = DataSource(path=uri, text_column="sentence")
    data = load_labelled(
        src, "classification", ["neg", "pos"], max_bad_fraction=1.0, labels_are_indices=True
    )
    assert len(data.dataset) == 2 and data.report.bad == 4
    assert any(e.startswith(f"{uri}:5: unknown label '7'") for e in data.report.examples)
    with pytest.raises(DataError, match="too many bad rows"):
        load_labelled(
            src, "classification", ["neg", "pos"], max_bad_fraction=0.5, labels_are_indices=True
        )


def test_preflight_names_unreadable_data_and_passes_readable(ray_local, s3_bucket, tmp_path):
    from lmplatform.data.sources import DataSource
    from lmplatform.pipeline import preflight

    storage.write_text(f"{s3_bucket}/data/train.tsv", "sentence\tlabel\nok\t1\n")
    problems = preflight.run_checks(
        storage={"output_dir": f"{s3_bucket}/runs", "registry": f"{s3_bucket}/registry"},
        data={
            "task s train": DataSource(path=f"{s3_bucket}/data/train.tsv"),
            "task s dev": DataSource(path=f"{s3_bucket}/data/missing.tsv"),
            "pretraining corpus": DataSource(path=str(tmp_path / "nowhere.txt")),
        },
        gpus={},
    )
    text = "\n".join(str(p) for p in problems)
    assert [p.check for p in problems] == ["data", "data"], text
    assert "task s dev" in text and "missing.tsv" in text and "nowhere.txt" in text
    assert "python -m lmplatform.storage upload" in problems[0].fix


def test_storage_cli_uploads_a_folder(s3_bucket, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "sub" / "b.txt").write_text("b")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmplatform.storage",
            "upload",
            str(tmp_path / "d"),
            f"{s3_bucket}/up",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "uploaded 2 file(s)" in r.stdout
    assert storage.find(f"{s3_bucket}/up") == ["a.txt", "sub/b.txt"]
