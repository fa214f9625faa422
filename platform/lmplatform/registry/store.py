"""The model registry: the one module that knows how models are laid out in storage.

    <root>/pretrained/<name>/<version>/        save_pretrained folder + metadata.json
    <root>/tasks/<task>/<version>/             fine-tuned task model + metadata.json
    <root>/tasks/<task>/best/<NNNNNNNN>.json   promotion log: the highest record names `best`

`root` is a local path or a URI (s3://, gs://, …) read and written through `lmplatform.storage`.
The same guarantees hold on a local disk and on an object store, because both are built from
one primitive, `storage.create_exclusive` (a hard link on disk, `If-None-Match: *` on S3):

- A version number is claimed by creating `<version>/.claim` exclusively: concurrent publishers
  (processes, nodes) always get distinct versions. The files follow; `metadata.json` is written
  last and records the sha256 of every file, so a version is visible only once complete and a
  damaged file is caught on load.
- Promotion is a compare-and-swap: read the newest promotion record, compare, then create the
  next record exclusively; losing that race means someone else promoted, so re-read and compare
  again. A worse model never replaces a better one, and the log keeps who replaced whom.
- Rollback is the same compare-and-swap: it writes nothing if another promotion lands between
  its read and its write.
- A corrupt `metadata.json` is skipped with a warning: it never blocks the other versions of the
  task. A corrupt promotion record is an error naming it: it may be a rollback, and skipping it
  would silently bring back the model that was rolled away from.
- Every file name read from storage (metadata.json's `files`, a listing) must stay inside its
  version folder: whoever can write the bucket cannot choose where files land on the nodes that
  load from it. Cached copies of remote versions are re-checked (file sizes) on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

from lmplatform import storage

KINDS = ("pretrained", "tasks")
# always used with fullmatch: `$` also matches before a trailing newline ("task\n"), and \d
# matches any Unicode digit
_VERSION = re.compile(r"v([0-9]{4,})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_RECORD = re.compile(r"([0-9]{8})\.json")
log = logging.getLogger("lmplatform.registry.store")
_warned: set[str] = set()


class RegistryError(LookupError):
    """A model or version that is not in the registry, or cannot be used (the message says why)."""


def check_name(name: str, what: str = "model name") -> str:
    """Names become storage path segments: letters, digits, '_', '.', '-' only (no traversal)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"{what} {name!r}: use letters, digits, '_', '.', '-' (starting with a letter or "
            "digit, 64 at most)"
        )
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise ValueError(f"version {version!r}: expected v followed by 4+ digits (v0003)")
    return version


def check_ref(ref: str, what: str = "model reference") -> tuple[str, str]:
    """'name', 'name@v0003', 'name@latest' or 'name@best' -> (name, version part), validated."""
    name, _, version = ref.partition("@")
    check_name(name, what)
    if version not in ("", "latest", "best"):
        check_version(version)
    return name, version


HF_PREFIX = "hf:"
"""A model reference naming a Hugging Face checkpoint (a folder or hub id) instead of a
registry model; registry/hub.py imports it into the registry on first use."""


def is_hf(ref: str) -> bool:
    return ref.startswith(HF_PREFIX)


def check_hf_ref(ref: str, what: str) -> str:
    if not ref.removeprefix(HF_PREFIX).strip():
        raise ValueError(f"{what} {ref!r}: name a folder or hub id after 'hf:'")
    return ref


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)


class Registry:
    """A registry root, opened once where a config is read and passed along as this object
    (`RegistryRoot` in config fields); equal to another of the same root."""

    def __init__(self, root: str | os.PathLike | Registry):
        self.written = root.written if isinstance(root, Registry) else os.fspath(root)
        """The root as the config wrote it: what a config dumps and hashes (a relative path
        stays relative, so a pipeline's stage hashes do not depend on the working folder)."""
        self.uri = storage.normalize(self.written)
        storage.filesystem(self.uri)  # an unknown scheme or a missing extra fails here, clearly

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Registry) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    # ----------------------------------------------------------------- paths

    def _path(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def location(self, kind: str, name: str, version: str) -> str:
        """Where a version lives (a local folder or a URI), for messages and lineage."""
        self._check_kind(kind)
        return self._path(kind, check_name(name), check_version(version))

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"registry kind {kind!r}: expected one of {', '.join(KINDS)}")

    # ----------------------------------------------------------------- listing

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return [n for n in storage.listdir(self._path(kind)) if _NAME.fullmatch(n)]

    def versions(self, kind: str, name: str) -> list[str]:
        """Complete, readable versions only (metadata.json present and valid), oldest first.
        A version whose metadata.json is corrupt is skipped with a warning."""
        self._check_kind(kind)
        check_name(name)
        out = []
        for v in storage.listdir(self._path(kind, name)):
            if not _VERSION.fullmatch(v):
                continue
            try:
                self.metadata(kind, name, v)
            except FileNotFoundError:
                continue  # claimed, still being written (or its publisher died)
            except RegistryError as e:
                _warn_once(f"skipping {e}")
                continue
            out.append(v)
        return sorted(out, key=lambda v: int(v[1:]))

    def list(self, kind: str) -> list[dict]:
        """Every complete model of a kind with its metadata, e.g. for `GET /v1/tasks` or a CLI."""
        return [
            {"name": name, "version": v, **self.metadata(kind, name, v)}
            for name in self.names(kind)
            for v in self.versions(kind, name)
        ]

    def metadata(self, kind: str, name: str, version: str) -> dict:
        """A version's metadata; FileNotFoundError while incomplete, RegistryError if corrupt."""
        self._check_kind(kind)
        path = self._path(kind, check_name(name), check_version(version), "metadata.json")
        return _parse_metadata(storage.read_bytes(path), f"{kind}/{name}@{version}", path)

    def resolve(self, kind: str, ref: str) -> tuple[str, str]:
        """'name', 'name@v0003', 'name@latest' or 'name@best' (tasks) -> (name, version)."""
        name, version = check_ref(ref)
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
        """A local folder with the version's files, every file checked against the sha256 that
        `metadata.json` recorded at publish. Remote versions are downloaded once into a cache
        keyed by registry URI and content hash, so two registries never share a cached model;
        a cached copy whose file sizes no longer match is downloaded again."""
        self._check_kind(kind)
        src = self._path(kind, check_name(name), check_version(version))
        raw = storage.read_bytes(storage.join(src, "metadata.json"))
        ref = f"{kind}/{name}@{version} in {self.uri}"
        files = _files(_parse_metadata(raw, f"{kind}/{name}@{version}", src), ref)
        if storage.is_local(self.uri):
            _verify(Path(src), files, ref)
            return Path(src)
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        content = hashlib.sha256(raw).hexdigest()[:16]
        cache = storage.cache_root() / "registry" / key / kind / name / f"{version}-{content}"
        if (cache / "metadata.json").is_file():
            if _sizes_match(cache, files):
                return cache
            log.warning(f"{ref}: the cached copy {cache} does not match metadata.json: refetching")
            _discard(cache)
        return _download(src, files, raw, cache, ref)

    # ----------------------------------------------------------------- writing

    def publish(self, kind: str, name: str, folder: str | os.PathLike, metadata: dict) -> str:
        """Copy a saved model folder in as the next version; metadata.json (the folder's own,
        updated with `metadata` and the sha256 of every file) goes last. Returns the version."""
        self._check_kind(kind)
        check_name(name)
        value = metadata.get("value")
        if isinstance(value, float) and not math.isfinite(value):
            raise RegistryError(f"{kind}/{name}: non-finite value {value!r} (a diverged run?)")
        metadata = _finite_or_null(metadata, f"metadata of {kind}/{name}")
        if isinstance(metadata.get("parent"), str):
            check_ref(metadata["parent"].removeprefix("random:"), "parent")
        src = Path(folder)
        own = src / "metadata.json"  # the folder's own description (model config, head…)
        if own.is_file():
            metadata = {**_parse_metadata(own.read_bytes(), str(own), str(own)), **metadata}
        files = sorted(p for p in src.rglob("*") if p.is_file() and p != own)
        if not files:
            raise RegistryError(f"{src}: nothing to publish (no files)")
        version = self._claim(kind, name)
        dest = self._path(kind, name, version)
        checksums = {}
        for f in files:
            rel = f.relative_to(src).as_posix()
            storage.upload(f, storage.join(dest, rel))
            checksums[rel] = {"sha256": _sha256_file(f), "bytes": f.stat().st_size}
        meta = {
            **metadata,
            "name": name,
            "version": version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": checksums,
        }
        storage.write_bytes(
            storage.join(dest, "metadata.json"),
            json.dumps(meta, indent=2, allow_nan=False).encode(),
        )
        return version

    def _claim(self, kind: str, name: str) -> str:
        """The next free version number, owned by this caller alone."""
        owner = json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "t": time.time()})
        for _ in range(1000):
            taken = [
                int(m.group(1))
                for v in storage.listdir(self._path(kind, name))
                if (m := _VERSION.fullmatch(v))
            ]
            version = f"v{(max(taken) + 1) if taken else 1:04d}"
            try:
                storage.create_exclusive(self._path(kind, name, version, ".claim"), owner.encode())
                return version
            except FileExistsError:
                continue  # a concurrent publisher took it: look again
        raise RegistryError(f"could not claim a version for {kind}/{name} after 1000 tries")

    # ----------------------------------------------------------------- promotion

    def best(self, task: str) -> str | None:
        """The promoted version of a task (None if never promoted)."""
        rec = self._best_record(task)[1]
        return rec["version"] if rec else None

    def _records(self, task: str) -> list[int]:
        return sorted(
            int(m.group(1))
            for n in storage.listdir(self._path("tasks", check_name(task), "best"))
            if (m := _RECORD.fullmatch(n))
        )

    def _read_record(self, task: str, seq: int) -> dict:
        """One promotion record; RegistryError naming it when it cannot be read (a damaged
        record may be a rollback: skipping it would silently undo that rollback)."""
        path = self._path("tasks", task, "best", f"{seq:08d}.json")
        try:
            rec = json.loads(storage.read_bytes(path))
            check_version(rec["version"])
            return rec
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(
                f"promotion record {path} of task {task!r} is unreadable ({type(e).__name__}: "
                f"{e}): the task's best is unknown; repair or delete that record, or promote a "
                "version with --force to supersede it"
            ) from None

    def _best_record(self, task: str, strict: bool = True) -> tuple[int, dict | None]:
        """(highest record number, newest usable record). An unreadable record raises (unless
        not `strict`: a forced promotion supersedes it). A record naming a version that is no
        longer readable is skipped with a warning, the one before counting, except a rollback's:
        the one before it is the model that was rolled away from."""
        seqs = self._records(task)
        for seq in reversed(seqs):
            try:
                rec = self._read_record(task, seq)
            except FileNotFoundError:
                continue  # deleted since the listing: no longer part of the log
            except RegistryError as e:
                if strict:
                    raise
                _warn_once(f"skipping {e}")
                continue
            try:
                self.metadata("tasks", task, rec["version"])
                return seqs[-1], rec
            except (RegistryError, FileNotFoundError) as e:
                if strict and rec.get("note") == "rollback":
                    raise RegistryError(
                        f"promotion record {seq:08d}.json of task {task!r} rolls back to "
                        f"{rec['version']}, which is unreadable ({e}): falling back would restore "
                        "the model it rolled away from; promote a version with --force"
                    ) from None
                _warn_once(f"skipping promotion record {seq:08d}.json of task {task!r}: {e}")
        return (seqs[-1] if seqs else 0), None

    def _swap(self, task: str, seq: int, record: dict) -> bool:
        """Create promotion record `seq + 1`: False when another promotion created it first."""
        path = self._path("tasks", task, "best", f"{seq + 1:08d}.json")
        try:
            storage.create_exclusive(path, json.dumps(record, indent=2).encode())
            return True
        except FileExistsError:
            return False

    def promote(
        self,
        task: str,
        version: str,
        value: float | None = None,
        force: bool = False,
        note: str | None = None,
    ) -> tuple[bool, dict | None]:
        """Make `version` the task's best if its metric value beats the current best's (or
        `force`). Returns (promoted, previous best as {version, value} or None).

        A compare-and-swap on any storage: the next promotion record is created exclusively, so
        of two concurrent promotions that read the same best, one wins and the other compares
        again against the winner. Values must be finite; a candidate scored with another metric
        or on another dev set than the current best cannot be compared and needs `force`."""
        meta = self.metadata("tasks", check_name(task), check_version(version))
        value = _finite_value(task, version, meta.get("value") if value is None else value)
        for _ in range(1000):
            seq, current = self._best_record(task, strict=not force)
            previous = None
            if current is not None:
                cur = self.metadata("tasks", task, current["version"])
                previous = {"version": current["version"], "value": cur.get("value")}
                if not force:
                    _check_comparable(task, version, meta, current["version"], cur)
                    if previous["value"] is not None and value <= previous["value"]:
                        return False, previous
            if self._swap(task, seq, _record(version, value, meta, previous, force, note)):
                return True, previous
            # someone promoted meanwhile: compare against their model
        raise RegistryError(f"could not promote tasks/{task}@{version}: too much contention")

    def rollback(self, task: str, version: str | None = None, force: bool = False) -> dict:
        """Make an earlier version the task's best again: `version`, or the one the current best
        replaced. Refused when it scores worse than the current best (or on another metric or
        dev set) unless `force`: a rollback is a decision about a known-worse model. Returns the
        new promotion record.

        A compare-and-swap like `promote`, judged against the best it read: if another
        promotion lands before the rollback's record is written, nothing is written and
        RegistryError names both (a rollback decided against a best that is gone must not
        replace a newer model)."""
        seq, current = self._best_record(check_name(task))
        if current is None:
            raise RegistryError(f"task {task!r} has no promoted best model to roll back")
        version = check_version(version or _replaced(task, current))
        meta = self.metadata("tasks", task, version)
        previous = self._judge_rollback(task, version, meta, current, force)
        value = _finite_value(task, version, meta.get("value"))
        record = _record(version, value, meta, previous, force, "rollback")
        for _ in range(1000):
            if self._swap(task, seq, record):
                return record
            seq, now = self._best_record(task)
            if now is None or now["version"] != current["version"]:
                raise RegistryError(
                    f"tasks/{task}: the best changed from {current['version']} to "
                    f"{now and now['version']} (a concurrent promotion) while rolling back to "
                    f"{version}: nothing was changed; look again, then roll back if still wanted"
                )
        raise RegistryError(f"could not roll back tasks/{task}: too much contention")

    def _judge_rollback(
        self, task: str, version: str, meta: dict, current: dict, force: bool
    ) -> dict:
        """The current best as {version, value}, once rolling back to `version` is allowed."""
        if version == current["version"]:
            raise RegistryError(f"tasks/{task}@{version} is already the best")
        cur = self.metadata("tasks", task, current["version"])
        if not force:
            _check_comparable(task, version, meta, current["version"], cur)
            a, b = meta.get("value"), cur.get("value")
            if a is not None and b is not None and a < b:
                raise RegistryError(
                    f"tasks/{task}@{version} scores {meta.get('metric')}={a:.4f}, below the "
                    f"current best {current['version']} ({b:.4f}): pass --force to roll back "
                    "to it anyway"
                )
        return {"version": current["version"], "value": cur.get("value")}

    def incomplete(self, older_than_s: float = 24 * 3600) -> list[tuple[str, str, str, float]]:
        """Versions claimed but never completed (no metadata.json) for longer than
        `older_than_s`: a publisher that died. (kind, name, version, age in seconds)."""
        out = []
        now = time.time()
        for kind in KINDS:
            for name in self.names(kind):
                for v in storage.listdir(self._path(kind, name)):
                    if not _VERSION.fullmatch(v) or storage.exists(
                        self._path(kind, name, v, "metadata.json")
                    ):
                        continue
                    try:
                        claimed = json.loads(
                            storage.read_bytes(self._path(kind, name, v, ".claim"))
                        )["t"]
                    except (FileNotFoundError, ValueError, KeyError, TypeError):
                        claimed = 0.0  # no readable claim: nobody owns it
                    if now - claimed >= older_than_s:
                        out.append((kind, name, v, now - claimed))
        return out

    def remove_incomplete(self, kind: str, name: str, version: str) -> None:
        """Delete a version that never completed (a complete one is refused)."""
        self._check_kind(kind)
        if storage.exists(
            self._path(kind, check_name(name), check_version(version), "metadata.json")
        ):
            raise RegistryError(f"{kind}/{name}@{version} is complete: not removed")
        storage.remove(self._path(kind, name, version))

    def promotions(self, task: str) -> list[dict]:
        """The promotion log, oldest first (unreadable records left out with a warning: this is
        the history for people; `best` refuses to guess past them)."""
        out = []
        for seq in self._records(task):
            try:
                out.append(self._read_record(task, seq))
            except (RegistryError, FileNotFoundError) as e:
                _warn_once(f"skipping {e}")
        return out


# --------------------------------------------------------------------------- helpers


def _parse_metadata(raw: bytes, ref: str, where: str) -> dict:
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"{ref}: metadata.json is corrupt ({e}) at {where}") from None
    if not isinstance(meta, dict):
        raise RegistryError(f"{ref}: metadata.json is not an object at {where}")
    return meta


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(meta: dict, ref: str) -> dict[str, dict]:
    """metadata.json's `files` ({relative name: {sha256, bytes}}), every name checked to stay
    inside the version folder: the names become paths on each node that loads the version."""
    files = meta.get("files") or {}
    if not isinstance(files, dict):
        raise RegistryError(f"{ref}: metadata.json 'files' is not an object")
    for rel, want in files.items():
        _check_file_name(rel, ref)
        if not (
            isinstance(want, dict)
            and isinstance(want.get("sha256"), str)
            and isinstance(want.get("bytes"), int)
        ):
            raise RegistryError(f"{ref}: metadata.json lacks the sha256 or size of file {rel!r}")
    return files


def _check_file_name(rel, ref: str) -> None:
    """A file name read from storage (metadata.json, a listing) must be a relative path inside
    its version folder: whoever can write the registry's bucket must not choose where files land
    (`/etc/…`, `../../…`) on every node that loads from it."""
    if (
        not isinstance(rel, str)
        or "\\" in rel
        or "\0" in rel
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise RegistryError(
            f"{ref}: refusing file {rel!r}: file names read from the registry must be "
            "relative paths inside the version folder (no leading '/', '.', '..', empty part "
            "or backslash); its storage may have been tampered with"
        )


def _inside(folder: Path, rel, ref: str) -> Path:
    """`folder/rel`, refused unless it stays inside `folder` (see `_check_file_name`)."""
    _check_file_name(rel, ref)
    path = folder / rel
    if not path.resolve().is_relative_to(folder.resolve()):  # through a symlink on disk
        raise RegistryError(f"{ref}: file {rel!r} resolves outside {folder}: refused")
    return path


def _verify(folder: Path, files: dict[str, dict], ref: str) -> None:
    if not files:
        _warn_once(f"{ref}: no checksums recorded (published by an older version): not verified")
        return
    for rel, want in files.items():
        p = _inside(folder, rel, ref)
        if not p.is_file():
            raise RegistryError(f"{ref}: file {rel} is missing")
        got = _sha256_file(p)
        if got != want["sha256"]:
            raise RegistryError(
                f"{ref}: {rel} does not match its checksum (sha256 {got[:12]}…, "
                f"{p.stat().st_size} bytes; recorded {want['sha256'][:12]}…, {want['bytes']} bytes): "
                "the stored file is damaged; publish the model again or use another version"
            )


def _sizes_match(folder: Path, files: dict[str, dict]) -> bool:
    """A cheap re-check of a cached copy on every load (sizes, not checksums: hashing every
    weight file at each load would cost as much as the download)."""
    try:
        return all((folder / rel).stat().st_size == w["bytes"] for rel, w in files.items())
    except OSError:
        return False


def _discard(cache: Path) -> None:
    """Move a damaged cached copy aside, then delete it: a concurrent loader sees the whole
    folder or none (and a replica that has its files open keeps reading them)."""
    stale = cache.with_name(cache.name + f".stale-{os.getpid()}-{time.time_ns()}")
    try:
        os.replace(cache, stale)
    except OSError:
        return  # another loader moved it first
    shutil.rmtree(stale, ignore_errors=True)


def _download(src: str, files: dict[str, dict], raw: bytes, cache: Path, ref: str) -> Path:
    """Fetch a version into a private folder, verify it, and rename it to `cache`: the cached
    copy is complete or absent, whoever else is loading the same version."""
    tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}-{time.time_ns()}")
    names = list(files) or storage.find(src)  # no `files`: published by an older version
    try:
        tmp.mkdir(parents=True)
        for f in names:
            if f != "metadata.json":
                storage.download(storage.join(src, f), _inside(tmp, f, ref))
        _verify(tmp, files, ref)
        (tmp / "metadata.json").write_bytes(raw)  # last: marks the cached copy complete
        try:
            os.replace(tmp, cache)
        except OSError:  # a concurrent loader finished first: same content, keep theirs
            if not (cache / "metadata.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache


def _finite_or_null(data, where: str):
    """Metadata is strict JSON: a NaN/inf besides the promoted value (an auxiliary metric of a
    diverged step, say) is stored as null, with a warning naming it."""
    if isinstance(data, float) and not math.isfinite(data):
        log.warning(f"{where}: non-finite {data!r} stored as null")
        return None
    if isinstance(data, dict):
        return {k: _finite_or_null(v, f"{where}.{k}") for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite_or_null(v, f"{where}[{i}]") for i, v in enumerate(data)]
    return data


def _finite_value(task: str, version: str, value) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise RegistryError(f"tasks/{task}@{version}: metric value {value!r} is not finite")
    return value


def _record(version: str, value, meta: dict, previous, force: bool, note) -> dict:
    """A promotion record: who became best, with what score, replacing whom, and why."""
    return {
        "version": version,
        "value": value,
        "metric": meta.get("metric"),
        "dev_fingerprint": _dev_fp(meta),
        "previous": previous,
        "forced": force,
        "note": note,
        "time": time.time(),
    }


def _replaced(task: str, current: dict) -> str:
    """The version the current best replaced: where a rollback without `--to` goes."""
    previous = current.get("previous")
    version = previous.get("version") if isinstance(previous, dict) else None
    if not isinstance(version, str):
        raise RegistryError(
            f"tasks/{task}@{current['version']} replaced nothing: name the version to roll back to"
        )
    return version


def _dev_fp(meta: dict) -> str | None:
    fp = meta.get("data_fingerprint")
    return fp.get("dev") if isinstance(fp, dict) else None


def _check_comparable(task: str, version: str, meta: dict, best: str, best_meta: dict) -> None:
    for what, a, b in (
        ("metric", meta.get("metric"), best_meta.get("metric")),
        ("dev-set fingerprint", _dev_fp(meta), _dev_fp(best_meta)),
    ):
        if a is not None and b is not None and a != b:
            raise RegistryError(
                f"tasks/{task}@{version} was scored with {what} {a!r}, the current best "
                f"{best} with {b!r}: the values are not comparable; promote with --force "
                "to replace it anyway"
            )
