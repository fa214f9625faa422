"""The registry against a hostile or racing store (moto's S3 on 127.0.0.1): file names in
metadata.json that would leave the cache, names with a trailing newline, S3's 409 on racing
conditional writes, backends without conditional writes, a rollback racing a promotion, a
damaged promotion record, a damaged cached copy, and the mode of the files it writes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from conftest import model_folder
from lmplatform import storage
from lmplatform.registry.store import Registry, RegistryError, check_name, check_ref, check_version


def _model(tmp_path: Path, payload: bytes = b"w" * 5000) -> Path:
    return model_folder(tmp_path, payload)


def _meta(value: float) -> dict:
    return {"kind": "task", "metric": "accuracy", "value": value, "data_fingerprint": {"dev": "d"}}


def _task(reg: Registry, tmp_path: Path, *values: float) -> list[str]:
    return [reg.publish("tasks", "t", _model(tmp_path), _meta(v)) for v in values]


class _Body:
    """The raw body aiobotocore reads an HTTP response from."""

    def __init__(self, data: bytes):
        self.data = data

    async def read(self) -> bytes:
        return self.data


_CONFLICT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code>'
    b"<Message>A conflicting operation occurred. If using PutObject you can retry the request."
    b"</Message><RequestId>R</RequestId><HostId>H</HostId></Error>"
)


def conflict(request):
    """What AWS answers a conditional PUT racing another one on the same key: 409 with this XML
    (moto never does). botocore parses it and s3fs translates it exactly as it would AWS's."""
    from aiobotocore.awsrequest import AioAWSResponse

    return AioAWSResponse(request.url, 409, {"content-type": "application/xml"}, _Body(_CONFLICT))


@contextmanager
def on_conditional_put(bucket: str, handler):
    """Call handler(key, request) before each conditional PUT (If-None-Match: *) this process
    sends to S3, through botocore's `before-send` event on the client s3fs uses: a response it
    returns replaces the server's answer; None lets the request go to moto."""
    fs, _ = storage.filesystem(bucket)  # fsspec's cached instance: the one the registry uses
    fs.connect()

    def hook(request, **_):
        if request.headers.get("If-None-Match") in (b"*", "*"):
            return handler(urlsplit(request.url).path, request)
        return None

    fs.s3.meta.events.register("before-send.s3.PutObject", hook)
    try:
        yield
    finally:
        fs.s3.meta.events.unregister("before-send.s3.PutObject", hook)


# ----------------------------------------------------------------------------- item 3: names


@pytest.mark.parametrize("bad", ["ABSOLUTE", "../../escape", "a//b", "./x", "a\\b", ""])
def test_file_names_in_metadata_cannot_leave_the_version_folder(s3_bucket, tmp_path, bad):
    """Whoever can write the bucket must not write files anywhere on a node that loads a model:
    every name metadata.json lists is refused unless it stays inside the version folder."""
    reg = Registry(f"{s3_bucket}/registry")
    (version,) = _task(reg, tmp_path, 0.5)
    target, payload = tmp_path / "pwned", b"owned"
    if bad == "ABSOLUTE":  # the object is there too: the old code downloaded it to `target`
        bad = str(target)
        storage.write_bytes(storage.join(reg.location("tasks", "t", version), bad), payload)
    meta_uri = storage.join(reg.location("tasks", "t", version), "metadata.json")
    meta = storage.read_json(meta_uri)
    meta["files"][bad] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    storage.write_json(meta_uri, meta)
    with pytest.raises(RegistryError, match=r"tasks/t@v0001 in .*: refusing file") as e:
        reg.local_path("tasks", "t", version)
    assert repr(bad) in str(e.value)
    assert not target.exists()


def test_names_with_a_trailing_newline_or_foreign_digits_are_refused():
    for call in (
        lambda: check_name("task\n"),
        lambda: check_version("v0001\n"),
        lambda: check_version("v\u0661\u0662\u0663\u0664"),  # Arabic-Indic digits
        lambda: check_ref("task\n@v0001"),
        lambda: check_ref("task@v0001\n"),
    ):
        with pytest.raises(ValueError, match="use letters, digits|expected v followed by"):
            call()
    assert check_ref("task@v0001") == ("task", "v0001")


# ----------------------------------------------------------------------------- item 10: writes


def test_a_409_conditional_request_conflict_is_retried(s3_bucket, tmp_path):
    """AWS answers 409 ConditionalRequestConflict when two conditional PUTs race; s3fs raises
    a plain OSError for it. The version claim and the promotion record are retried, not lost."""
    reg = Registry(f"{s3_bucket}/registry")
    hit: list[str] = []

    def first_time_conflict(key, request):
        if key not in hit:
            hit.append(key)
            return conflict(request)
        return None

    with on_conditional_put(s3_bucket, first_time_conflict):
        (version,) = _task(reg, tmp_path, 0.8)
        assert reg.promote("t", version) == (True, None)
    assert version == "v0001" and reg.best("t") == "v0001"
    assert [k.rsplit("/", 2)[-2:] for k in hit] == [["v0001", ".claim"], ["best", "00000001.json"]]


def test_a_write_that_keeps_conflicting_fails_with_a_clear_error(s3_bucket, tmp_path):
    reg = Registry(f"{s3_bucket}/registry")
    (version,) = _task(reg, tmp_path, 0.8)
    with on_conditional_put(s3_bucket, lambda key, request: conflict(request)):
        with pytest.raises(storage.StorageError, match=r"00000001\.json: S3 answered 409"):
            reg.promote("t", version)
    assert reg.best("t") is None


OPT_OUT = "LMPLATFORM_REGISTRY_UNSAFE_WRITES"  # documented in docs/registry.md


class CheckThenWriteFS(MemoryFileSystem):
    """fsspec's default `pipe_file(mode="create")`, as sftp, ftp and hdfs have it: a check for
    the file, then a plain write (two racing writers both succeed)."""

    protocol = ("checkthenwrite",)
    store: dict = {}
    pseudo_dirs = [""]
    pipe_file = fsspec.AbstractFileSystem.pipe_file


def test_backends_without_conditional_writes_are_refused_unless_named(tmp_path, monkeypatch):
    fsspec.register_implementation("checkthenwrite", CheckThenWriteFS, clobber=True)
    reg = Registry("checkthenwrite://reg")
    monkeypatch.delenv(OPT_OUT, raising=False)
    with pytest.raises(storage.StorageError, match="checkthenwrite:// has no atomic") as e:
        _task(reg, tmp_path, 0.8)
    assert f"{OPT_OUT}=checkthenwrite" in str(e.value)
    assert storage.find("checkthenwrite://reg") == []  # refused before anything was written
    monkeypatch.setenv(OPT_OUT, "sftp,checkthenwrite")
    (version,) = _task(reg, tmp_path, 0.8)
    assert reg.promote("t", version)[0] and reg.best("t") == version


# ----------------------------------------------------------------------------- item 12


def test_rollback_never_overwrites_a_promotion_that_lands_first(s3_bucket, tmp_path):
    """Another node promotes a better model between rollback's read of the best and its write:
    the rollback writes nothing and says so (it was decided against a best that is gone)."""
    root = f"{s3_bucket}/registry"
    reg = Registry(root)
    v1, v2, v3 = _task(reg, tmp_path, 0.7, 0.8, 0.9)
    reg.promote("t", v1)
    reg.promote("t", v2)
    promoter = (
        "import sys; from lmplatform.registry.store import Registry; "
        "Registry(sys.argv[1]).promote('t', 'v0003')"
    )
    raced: list[str] = []

    def promote_elsewhere_first(key, request):
        if key.endswith("/best/00000003.json") and not raced:
            raced.append(key)  # the rollback is about to write record 3: the other node wins
            subprocess.run([sys.executable, "-c", promoter, root], check=True, timeout=120)
        return None

    with on_conditional_put(s3_bucket, promote_elsewhere_first):
        with pytest.raises(RegistryError, match="best changed from v0002 to v0003"):
            reg.rollback("t", force=True)
    assert raced and reg.best("t") == v3
    assert [r["version"] for r in reg.promotions("t")] == [v1, v2, v3]
    rec = reg.rollback("t", v1, force=True)  # decided again, against v0003: applies
    assert rec["previous"]["version"] == v3 and reg.best("t") == v1


def test_an_unreadable_promotion_record_is_an_error_not_a_silent_undo(s3_bucket, tmp_path):
    reg = Registry(f"{s3_bucket}/registry")
    v1, v2 = _task(reg, tmp_path, 0.7, 0.8)
    reg.promote("t", v1)
    reg.promote("t", v2)
    assert reg.rollback("t", force=True)["version"] == v1  # record 3: v0002 was bad
    record = storage.join(reg.uri, "tasks", "t", "best", "00000003.json")
    storage.write_bytes(record, b'{"version": "v00')  # a damaged write, a bad edit
    for call in (lambda: reg.best("t"), lambda: reg.resolve("tasks", "t@best")):
        with pytest.raises(RegistryError, match=r"promotion record .*00000003\.json .*unreadable"):
            call()  # not v0002, the model the rollback removed
    with pytest.raises(RegistryError, match="00000003.json"):
        reg.promote("t", v2)
    assert reg.promote("t", v1, force=True)[0] and reg.best("t") == v1  # supersedes it
    # a rollback to a version that is no longer readable: the same, never the one before
    reg.promote("t", v2, force=True)
    reg.rollback("t", v1, force=True)
    storage.write_bytes(storage.join(reg.location("tasks", "t", v1), "metadata.json"), b"{")
    with pytest.raises(RegistryError, match="rolls back to v0001, which is unreadable"):
        reg.best("t")


def test_a_damaged_cached_copy_is_downloaded_again(s3_bucket, tmp_path):
    reg = Registry(f"{s3_bucket}/registry")
    weights = os.urandom(3000)
    v = reg.publish("pretrained", "m", _model(tmp_path, weights), {"kind": "pretrained"})
    cached = reg.local_path("pretrained", "m", v)
    (cached / "model.safetensors").write_bytes(weights[:1000])  # a disk filled up, say
    assert reg.local_path("pretrained", "m", v) == cached
    assert (cached / "model.safetensors").read_bytes() == weights
    (cached / "config.json").unlink()
    assert (reg.local_path("pretrained", "m", v) / "config.json").read_text() == "{}"


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_registry_files_get_the_mode_open_gives_not_0600(tmp_path, umask):
    """A publisher and a server running as different users share a local registry: files are
    0666 less the umask, as a plain open makes them (mkstemp's 0600 locked the server out)."""
    old = os.umask(umask)
    try:
        reg = Registry(tmp_path / "registry")
        (version,) = _task(reg, tmp_path, 0.8)
        reg.promote("t", version)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "registry").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {".claim", "metadata.json", "00000001.json"}
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
    json.loads((tmp_path / "registry/tasks/t/best/00000001.json").read_text())
