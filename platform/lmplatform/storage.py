"""The one storage layer: every read and write of run outputs, the model registry, checkpoints,
reports and metrics goes through here, for local paths and URIs alike (`file://`, `s3://`,
`gs://`, `memory://`). Nothing else in the platform puts `pathlib` on a location that may be a URI.

Built on fsspec, which the data readers (and `datasets`) already use. Cloud filesystems come from
the `cloud` extra (`pip install -e ".[cloud]"`: s3fs, gcsfs). S3-compatible stores (MinIO, moto,
Ceph) are reached through the standard `AWS_ENDPOINT_URL` variable with the usual AWS credential
variables, which botocore reads itself.

Atomicity: every write is whole or absent. On disk a file is written beside its target and
renamed; on object stores one PUT is atomic. `create_exclusive` is the one conditional write
(a hard link on disk, `If-None-Match: *` on S3, `ifGenerationMatch=0` on GCS): the registry
builds its version claims and its compare-and-swap promotions from it alone. Other fsspec
backends (sftp, hdfs, ftp, …) only emulate it (check, then write), so they are refused for it
unless named in LMPLATFORM_REGISTRY_UNSAFE_WRITES. Local files get the mode a plain `open`
gives (0666 less the umask), so a publisher and a server running as different users can share
a registry.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path

import fsspec

CLOUD_EXTRA = 'pip install -e ".[cloud]"'
# Protocols whose fsspec filesystem implements `pipe_file(mode="create")` as one conditional
# request the server decides: s3fs sends If-None-Match: *, gcsfs ifGenerationMatch=0.
ATOMIC_CREATE = frozenset({"s3", "s3a", "gs", "gcs"})
UNSAFE_WRITES_ENV = "LMPLATFORM_REGISTRY_UNSAFE_WRITES"
# S3 answers 409 ConditionalRequestConflict while another conditional write to the same key is
# in flight; AWS says to retry the PUT, which then succeeds or finds the winner's object (412)
CONFLICT_TRIES = 6


class StorageError(OSError):
    """A location that cannot be used (the message names it and says why)."""


class WriteConflict(StorageError):
    """A conditional write that kept colliding with concurrent ones (S3's 409) past the retries."""


def is_local(uri: str | os.PathLike) -> bool:
    s = str(uri)
    return "://" not in s or s.startswith("file://")


def normalize(uri: str | os.PathLike) -> str:
    """Local paths absolute (no `file://`), URIs as given without a trailing slash."""
    s = str(uri)
    if is_local(s):
        return os.path.abspath(os.path.expanduser(s.removeprefix("file://")))
    return s.rstrip("/")


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base/part/...` that keeps a URI's scheme (pathlib folds 's3://b' into 's3:/b')."""
    b = normalize(base)
    parts = tuple(p.strip("/") for p in parts if p)
    return os.path.join(b, *parts) if is_local(b) else "/".join([b, *parts])


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a local path or URI."""
    u = normalize(uri)
    if is_local(u):
        return fsspec.filesystem("file"), u
    try:
        # no listings cache: other processes and nodes publish and promote concurrently, and a
        # serving replica polls for new versions; a cached listing would hide them
        return fsspec.core.url_to_fs(u, use_listings_cache=False)
    except ImportError as e:
        raise StorageError(
            f"{u}: the filesystem for {u.split('://')[0]}:// is not installed ({e}); "
            f"install the cloud extra: {CLOUD_EXTRA}"
        ) from e
    except ValueError as e:
        raise StorageError(f"{u}: not a storage location fsspec knows ({e})") from e


def arrow_filesystem(uri: str | os.PathLike):
    """(pyarrow filesystem, path) for Ray Train/Tune `storage_filesystem` and Ray Data, backed by
    the same fsspec filesystem as everything else (same endpoint and credentials)."""
    import pyarrow.fs as pafs

    u = normalize(uri)
    if is_local(u):
        return pafs.LocalFileSystem(), u
    fs, path = filesystem(u)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


# ----------------------------------------------------------------------------- reading


def read_parquet(files: list[str], columns: list[str] | None = None):
    """Parquet files (local paths or URIs) as one Arrow table, `columns` only when given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        fs, path = arrow_filesystem(f)
        tables.append(pq.read_table(path, columns=columns, filesystem=fs))
    return pa.concat_tables(tables)


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str | os.PathLike):
    return json.loads(read_bytes(uri))


def listdir(uri: str | os.PathLike) -> list[str]:
    """Names directly under a folder (files and folders); [] when it does not exist."""
    fs, path = filesystem(uri)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    base = path.rstrip("/")
    return sorted(
        {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries if str(e).rstrip("/") != base}
    )


def find(uri: str | os.PathLike) -> list[str]:
    """Every file below a folder, as paths relative to it (sorted)."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    root = path.rstrip("/") + "/"
    return sorted(str(p)[len(root) :] for p in fs.find(path) if str(p).startswith(root))


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Replace the file at `uri` in one step: readers see the old content or the new, never half."""
    u = normalize(uri)
    if is_local(u):
        tmp = _local_temp(u, data)
        try:
            os.replace(tmp, u)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    fs, path = filesystem(u)
    fs.pipe_file(path, data)  # one PUT: atomic on object stores


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str | os.PathLike, data) -> None:
    write_bytes(uri, json.dumps(data, indent=2).encode())


def _local_temp(target: str, data: bytes) -> str:
    """`data` in a durable temp file beside `target` (same filesystem: renames and links work).
    Created with mode 0666 less the umask, as `open` would (mkstemp's 0600 would lock every
    other user out of the renamed file); O_EXCL with a random name keeps it private to us."""
    d = os.path.dirname(target)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


_MEMORY_LOCK = threading.Lock()


def create_exclusive(uri: str | os.PathLike, data: bytes) -> None:
    """Write `uri` only if nothing is there: FileExistsError otherwise. Exactly one of any number
    of concurrent callers (processes, nodes) succeeds, and the file is complete when it appears.
    StorageError on a backend that cannot do this atomically (see `ATOMIC_CREATE`)."""
    u = normalize(uri)
    if is_local(u):
        tmp = _local_temp(u, data)
        try:
            os.link(tmp, u)  # atomic, fails if the name exists, and the content is already there
        finally:
            os.unlink(tmp)
        return
    fs, path = filesystem(u)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if "memory" in protocols:
        with _MEMORY_LOCK:  # in-process filesystem (tests): a lock is exact
            if fs.exists(path):
                raise FileExistsError(u)
            fs.pipe_file(path, data)
        return
    _check_atomic_create(u, protocols)
    for attempt in range(CONFLICT_TRIES):
        if attempt:  # jittered backoff: racing writers must not retry in lockstep
            time.sleep(random.uniform(0.5, 1.0) * min(1.0, 0.02 * 2**attempt))
        try:
            fs.pipe_file(path, data, mode="create")
            return
        except FileExistsError:
            raise
        except (TypeError, NotImplementedError) as e:
            raise StorageError(
                f"{u}: {fs.protocol} does not offer conditional writes, which the registry "
                "needs to claim versions and promote safely; use a local path, s3:// or gs://"
            ) from e
        except OSError as e:
            if not _is_conditional_conflict(e):
                raise
    raise WriteConflict(
        f"{u}: S3 answered 409 ConditionalRequestConflict {CONFLICT_TRIES} times (other "
        "writers keep racing for this key); nothing was written, try again"
    )


def _check_atomic_create(uri: str, protocols: set[str]) -> None:
    allowed = {p.strip() for p in os.environ.get(UNSAFE_WRITES_ENV, "").split(",") if p.strip()}
    if protocols & (ATOMIC_CREATE | allowed):
        return
    scheme = uri.split("://", 1)[0].split("::", 1)[0]  # the name the user wrote
    name = scheme if scheme in protocols else sorted(protocols)[0]
    raise StorageError(
        f"{uri}: {name}:// has no atomic create-if-absent write (fsspec checks, then writes), "
        "so concurrent publishers or promoters could overwrite each other's version claims and "
        f"promotions; use a local path, s3:// or gs://, or, if only one writer ever uses this "
        f"registry at a time, set {UNSAFE_WRITES_ENV}={name} to accept the risk"
    )


def _is_conditional_conflict(e: BaseException) -> bool:
    """S3's 409 ConditionalRequestConflict, which s3fs raises as a plain OSError(EIO) whose
    cause is botocore's ClientError."""
    for err in (e, e.__cause__, e.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict) and (
            (response.get("Error") or {}).get("Code") == "ConditionalRequestConflict"
        ):
            return True
    return False


def upload(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a local file, or a folder with everything below it, to `uri` (file by file, each
    write atomic)."""
    src = Path(local)
    if src.is_file():
        _put_file(src, normalize(uri))
        return
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        _put_file(f, join(uri, f.relative_to(src).as_posix()))


def _put_file(src: Path, dest: str) -> None:
    if is_local(dest):
        write_bytes(dest, src.read_bytes())
    else:
        fs, path = filesystem(dest)
        fs.put_file(str(src), path)


def download(uri: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy a file, or a folder with everything below it, from `uri` to a local path."""
    fs, path = filesystem(uri)
    dest = Path(local)
    if fs.isfile(path):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(dest))
        return dest
    for rel in find(uri):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path.rstrip("/") + "/" + rel, str(target))
    return dest


def copy(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """One file from anywhere to anywhere."""
    write_bytes(dest, read_bytes(src))


def remove(uri: str | os.PathLike) -> None:
    """Delete a file or a folder with everything below it; nothing there is fine."""
    fs, path = filesystem(uri)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def cache_root() -> Path:
    """Where local copies of remote things live (LMPLATFORM_CACHE, else ~/.cache/lmplatform)."""
    return Path(
        os.environ.get("LMPLATFORM_CACHE") or Path.home() / ".cache" / "lmplatform"
    ).absolute()


# ----------------------------------------------------------------------------- mirrors


class Mirror:
    """A local folder that stands for a storage folder, for writers that need real files
    (TensorBoard, an append-only metrics log, tokenizer training): write under `.local`, then
    `push()` uploads what changed since the last push. For a local destination `.local` is the
    destination itself and `push()` does nothing.

    `pull`: file names to fetch first when they exist remotely, so that appending continues
    the remote file (a resumed run on another node keeps its earlier metrics).
    `every_s`: a push sooner than this after the last one does nothing unless forced (growing
    logs are re-uploaded whole: bound what that costs a training loop)."""

    def __init__(self, uri: str | os.PathLike, pull: tuple[str, ...] = (), every_s: float = 0):
        self.uri = normalize(uri)
        self.remote = not is_local(self.uri)
        if self.remote:
            self.local = Path(tempfile.mkdtemp(prefix="lmplatform-mirror-"))
            for name in pull:
                if exists(join(self.uri, name)):
                    download(join(self.uri, name), self.local / name)
        else:
            local_dir = self.uri  # a local destination: pathlib is safe here
            self.local = Path(local_dir)
            self.local.mkdir(parents=True, exist_ok=True)
        self._pushed: dict[str, tuple[int, int]] = {
            str(p): _stamp(p) for p in self.local.rglob("*") if p.is_file()
        }
        self.every_s, self._last = every_s, 0.0

    def push(self, force: bool = False) -> None:
        if not self.remote or (not force and time.time() - self._last < self.every_s):
            return
        self._last = time.time()
        for p in sorted(self.local.rglob("*")):
            if p.is_file() and self._pushed.get(str(p)) != (stamp := _stamp(p)):
                _put_file(p, join(self.uri, p.relative_to(self.local).as_posix()))
                self._pushed[str(p)] = stamp


def _stamp(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_mtime_ns, st.st_size


def unique_name(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def main(argv: list[str] | None = None) -> None:
    """`python -m lmplatform.storage upload LOCAL URI` / `ls URI`: the one command to put data
    where a cluster reads it, through the same layer (and endpoint variables) as the jobs."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lmplatform.storage", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload", help="copy a local file or folder (recursively) to a URI")
    up.add_argument("local")
    up.add_argument("uri")
    ls = sub.add_parser("ls", help="list every file below a URI")
    ls.add_argument("uri")
    args = p.parse_args(argv)
    if args.cmd == "upload":
        src = Path(args.local)
        if not src.exists():
            raise SystemExit(f"error: {src}: no such file or folder")
        files = [src] if src.is_file() else [f for f in src.rglob("*") if f.is_file()]
        upload(src, args.uri)
        print(
            f"uploaded {len(files)} file(s), {sum(f.stat().st_size for f in files)} bytes -> {normalize(args.uri)}"
        )
    else:
        for rel in find(args.uri):
            print(join(args.uri, rel))


if __name__ == "__main__":
    main()
