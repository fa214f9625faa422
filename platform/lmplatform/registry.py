"""The model registry: the one module that knows how models are laid out in storage.

    <root>/pretrained/<name>/<version>/     save_pretrained folder + metadata.json
    <root>/tasks/<task>/<version>/          fine-tuned task model + metadata.json
    <root>/tasks/<task>/best.json           {"version": …} — the promoted model

`root` is a local path or a URI that pyarrow's filesystems understand (s3://, gs://), the same
way Ray Train's `storage_path` works. A version becomes visible only once its `metadata.json`
is written, and that file is written last: a reader never sees a half-copied model, on any
filesystem. Pointers (`best.json`) are single small objects, replaced in one write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

KINDS = ("pretrained", "tasks")
_VERSION = re.compile(r"^v(\d{4,})$")


class RegistryError(LookupError):
    """A model or version that is not in the registry (the message says what is)."""


class Registry:
    def __init__(self, root: str | os.PathLike):
        root = str(root)
        if "://" not in root:
            root = os.path.abspath(root)
            os.makedirs(root, exist_ok=True)
        self.uri = root
        self.fs, self.base = pafs.FileSystem.from_uri(root)

    # ----------------------------------------------------------------- paths

    def _path(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _read_json(self, path: str) -> dict:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def _write_json(self, path: str, data: dict) -> None:
        payload = json.dumps(data, indent=2).encode()
        if isinstance(self.fs, pafs.LocalFileSystem):
            # local: temp file + rename, so a concurrent reader sees old or new, never half
            d = os.path.dirname(path)
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            with self.fs.open_output_stream(path) as f:  # object stores: one PUT is atomic
                f.write(payload)

    # ----------------------------------------------------------------- listing

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        sel = pafs.FileSelector(self._path(kind), allow_not_found=True)
        return sorted(
            i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.Directory
        )

    def versions(self, kind: str, name: str) -> list[str]:
        """Complete versions only (those whose metadata.json exists), oldest first."""
        self._check_kind(kind)
        sel = pafs.FileSelector(self._path(kind, name), allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            if info.type == pafs.FileType.Directory and _VERSION.match(info.base_name):
                if self._exists(self._path(kind, name, info.base_name, "metadata.json")):
                    out.append(info.base_name)
        return sorted(out, key=lambda v: int(v[1:]))

    def list(self, kind: str) -> list[dict]:
        """Every complete model of a kind with its metadata, e.g. for `GET /v1/tasks` or a CLI."""
        rows = []
        for name in self.names(kind):
            for v in self.versions(kind, name):
                rows.append({"name": name, "version": v, **self.metadata(kind, name, v)})
        return rows

    def metadata(self, kind: str, name: str, version: str) -> dict:
        return self._read_json(self._path(kind, name, version, "metadata.json"))

    def resolve(self, kind: str, ref: str) -> tuple[str, str]:
        """'name', 'name@v0003' or 'name@best' (tasks) -> (name, version)."""
        name, _, version = ref.partition("@")
        versions = self.versions(kind, name)
        if not versions:
            known = ", ".join(self.names(kind)) or "none"
            raise RegistryError(f"no {kind} model {name!r} in {self.uri} (known: {known})")
        if version in ("", "latest"):
            return name, versions[-1]
        if version == "best":
            best = self.best(name)
            if best is None:
                raise RegistryError(f"task {name!r} has no promoted best model in {self.uri}")
            return name, best
        if version not in versions:
            raise RegistryError(
                f"{kind}/{name} has no version {version!r} (have: {', '.join(versions)})"
            )
        return name, version

    def local_path(self, kind: str, name: str, version: str) -> Path:
        """A local folder with the model's files (downloaded to a cache for remote roots)."""
        src = self._path(kind, name, version)
        if isinstance(self.fs, pafs.LocalFileSystem):
            return Path(src)
        cache = Path(tempfile.gettempdir()) / "lmplatform-registry" / kind / name / version
        if not (cache / "metadata.json").is_file():
            tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
            pafs.copy_files(
                src,
                str(tmp),
                source_filesystem=self.fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
            if cache.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, cache)
        return cache

    # ----------------------------------------------------------------- writing

    def publish(self, kind: str, name: str, folder: str | os.PathLike, metadata: dict) -> str:
        """Copy a saved model folder in as the next version; metadata.json goes last. Returns it."""
        self._check_kind(kind)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise ValueError(
                f"model name {name!r}: use letters, digits, '_', '.', '-' (64 at most)"
            )
        self.fs.create_dir(self._path(kind, name), recursive=True)
        for _ in range(100):
            existing = self._all_version_dirs(kind, name)
            nxt = f"v{(max(existing) + 1) if existing else 1:04d}"
            dest = self._path(kind, name, nxt)
            try:
                self._claim(dest)
                break
            except FileExistsError:
                continue  # a concurrent publisher took it: try the next number
        else:
            raise RuntimeError(f"could not allocate a version for {kind}/{name}")
        for f in sorted(Path(folder).iterdir()):
            if f.name == "metadata.json" or not f.is_file():
                continue
            pafs.copy_files(
                str(f),
                dest + "/" + f.name,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.fs,
            )
        meta = {
            **metadata,
            "name": name,
            "version": nxt,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._write_json(dest + "/metadata.json", meta)
        return nxt

    def _all_version_dirs(self, kind: str, name: str) -> list[int]:
        sel = pafs.FileSelector(self._path(kind, name), allow_not_found=True)
        return [
            int(m.group(1))
            for i in self.fs.get_file_info(sel)
            if (m := _VERSION.match(i.base_name))
        ]

    def _claim(self, dest: str) -> None:
        if isinstance(self.fs, pafs.LocalFileSystem):
            os.mkdir(dest)  # atomic: exactly one publisher gets each number
        else:
            if self._exists(dest + "/.claim"):
                raise FileExistsError(dest)
            with self.fs.open_output_stream(dest + "/.claim") as f:
                f.write(str(os.getpid()).encode())

    # ----------------------------------------------------------------- task pointers

    def best(self, task: str) -> str | None:
        path = self._path("tasks", task, "best.json")
        return self._read_json(path)["version"] if self._exists(path) else None

    def set_best(self, task: str, version: str) -> None:
        if version not in self.versions("tasks", task):
            raise RegistryError(f"tasks/{task} has no complete version {version!r}")
        self._write_json(
            self._path("tasks", task, "best.json"), {"version": version, "updated": time.time()}
        )

    def promote(
        self, task: str, version: str, value: float, force: bool = False
    ) -> tuple[bool, dict | None]:
        """Make `version` the task's best if its metric `value` beats the current best's (or
        `force`). Returns (promoted, previous best as {version, value} or None).

        Read-compare-write runs under an exclusive lock on local storage, so two concurrent
        promotions cannot both win against a stale best; the pointer itself is replaced in one
        atomic write and only ever names a complete version. (Object stores have no locks: there
        the last writer wins, and the pointer is still always complete.)
        """
        import contextlib

        lock = contextlib.nullcontext()
        if isinstance(self.fs, pafs.LocalFileSystem):
            lock = _FileLock(self._path("tasks", task, ".best.lock"))
        with lock:
            current = self.best(task)
            previous = None
            if current is not None:
                prev_value = self.metadata("tasks", task, current).get("value")
                previous = {"version": current, "value": prev_value}
                if not force and prev_value is not None and value <= prev_value:
                    return False, previous
            self.set_best(task, version)
            return True, previous

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"registry kind {kind!r}: expected one of {', '.join(KINDS)}")


class _FileLock:
    """An exclusive advisory lock (fcntl) held for a `with` block."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
