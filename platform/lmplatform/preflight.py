"""Preflight: what makes Ray jobs fail late, checked before any work starts.

Each check returns `Problem`s (what is wrong, and the fix); `jobs/preflight.py` prints one line
per problem and exits 2 if there is any, and the jobs run the same checks first.

- working_dir: files Ray would upload (everything not excluded by the runtime_env's `excludes`)
  larger than `max_file_mb`, a total over `max_total_mb`, and heavy folders left unexcluded
  (.git, .venv, runs, registry);
- storage: the registry root and output_dir are writable, from the driver and from every node
  (a task pinned to each alive node writes and removes a probe file), through the platform's
  storage layer (so s3:// uses the same endpoint and credentials as the jobs);
- data: every data path of the run (corpus, each task's train/dev) exists and is readable, from
  the driver and from every node (a local path outside the job's working_dir, or a bucket a
  node has no credentials for, fails here, not an hour later);
- auth: a cluster that asks for a token (HTTP 401 from the dashboard) and none to send;
- GPUs: a config asking for GPUs on a cluster that has none and cannot autoscale any;
- DeepSpeed (and torch) importable on every node.
"""

from __future__ import annotations

import fnmatch
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

HEAVY = (".git", ".venv", "runs", "registry")


@dataclass
class Problem:
    check: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message} -> fix: {self.fix}"


def _excluded(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        p = pat.strip("/")
        if not p:
            continue
        if fnmatch.fnmatch(rel, p) or any(fnmatch.fnmatch(x, p) for x in parts):
            return True
        if rel.startswith(p + "/"):
            return True
    return False


def check_working_dir(
    root: str | os.PathLike,
    excludes: list[str],
    max_file_mb: float = 100,
    max_total_mb: float = 250,
) -> list[Problem]:
    root = Path(root)
    problems = []
    for heavy in HEAVY:
        if (root / heavy).exists() and not _excluded(heavy, excludes):
            problems.append(
                Problem(
                    "working_dir",
                    f"{heavy}/ would be uploaded with the job",
                    f"add '{heavy}' to excludes in the runtime_env (jobs/runtime_env.yaml)",
                )
            )
    total = 0
    big = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = [d for d in dirnames if not _excluded(f"{rel_dir}/{d}".lstrip("/"), excludes)]
        for f in filenames:
            rel = f"{rel_dir}/{f}".lstrip("/")
            if _excluded(rel, excludes):
                continue
            try:
                size = os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                continue
            total += size
            if size > max_file_mb * 2**20:
                big.append((rel, size))
    for rel, size in sorted(big, key=lambda x: -x[1]):
        problems.append(
            Problem(
                "working_dir",
                f"{rel} is {size / 2**20:.0f} MB and would be uploaded with every job",
                f"add '{rel}' to excludes in the runtime_env, or put it on shared storage (s3://...)",
            )
        )
    if total > max_total_mb * 2**20:
        problems.append(
            Problem(
                "working_dir",
                f"the working_dir totals {total / 2**20:.0f} MB (limit {max_total_mb:.0f} MB here; Ray refuses 500 MB)",
                "exclude data, outputs and environments in the runtime_env",
            )
        )
    return problems


def probe_storage(uri: str) -> str | None:
    """None if `uri` is writable (a probe file is written and removed), else the reason."""
    from lmplatform import storage

    try:
        probe = storage.join(uri, f".preflight-{uuid.uuid4().hex[:8]}")
        storage.write_bytes(probe, b"ok")
        storage.remove(probe)
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def probe_data(source_json: str) -> str | None:
    """None if a data source's files exist and can be read (the first bytes of each), else the
    reason. Hub names are not checked (no hub is reachable from here to check them against)."""
    from lmplatform.data.sources import DataSource, resolve_files

    source = DataSource.model_validate_json(source_json)
    if source.path is None:
        return None
    try:
        import fsspec

        for f in resolve_files(source):
            with fsspec.open(f, "rb", **source.storage_options) as fh:
                fh.read(1)
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def check_data(sources: dict[str, object], cluster: bool) -> list[Problem]:
    """`sources`: what -> DataSource (e.g. 'task sst2 train' -> its source)."""
    blobs = {what: src.model_dump_json() for what, src in sources.items()}
    return [
        Problem(
            "data",
            f"{what} {sources[what].describe()!r} cannot be read from {where} ({reason})",
            "point it at files every node can read: s3://bucket/... (upload with "
            "`python -m lmplatform.storage upload LOCAL s3://bucket/prefix`) or a path inside "
            "the job's working_dir",
        )
        for what, where, reason in _probe_all(probe_data, blobs, cluster)
    ]


def _probe_all(probe, items: dict[str, str], cluster: bool) -> list[tuple[str, str, str]]:
    """(what, where, reason) for each item `probe` fails on: on the driver first and then, if
    the driver passed them all, on every alive node."""
    failed = [(what, "the driver", r) for what, item in items.items() if (r := probe(item))]
    if cluster and not failed:
        for node, reasons in _on_every_node(_probe_each, (probe, items)).items():
            failed += [(what, f"node {node}", r) for what, r in reasons.items()]
    return failed


def _probe_each(arg) -> dict[str, str]:
    probe, items = arg
    return {what: r for what, item in items.items() if (r := probe(item))}


def data_wants(pretrain=None, finetunes=()) -> dict[str, object]:
    """Every data source a run will read, named for the report."""
    out = {}
    if pretrain is not None:
        out[f"pretraining corpus of {pretrain.name}"] = pretrain.corpus.source
    for f in finetunes:
        out[f"task {f.task.name} train"] = f.task.train
        out[f"task {f.task.name} dev"] = f.task.dev
    return out


def check_storage(roots: dict[str, str], cluster: bool) -> list[Problem]:
    problems = [
        Problem(
            "storage",
            f"{what} {roots.get(what, '')!r} is not writable from {where} ({reason})",
            f"point {what} at storage every node can write: s3://bucket/prefix (or an NFS "
            "mount at the same path on every node)",
        )
        for what, where, reason in _probe_all(probe_storage, roots, cluster)
    ]
    if cluster and not problems:
        local = [w for w, u in roots.items() if "://" not in u or u.startswith("file://")]
        if local and _alive_nodes() > 1:
            # writable everywhere, but a local path is a different folder on each node
            problems.append(
                Problem(
                    "storage",
                    f"{', '.join(local)} is a local path on a {_alive_nodes()}-node cluster: each node writes its own copy",
                    "use s3://... (or an NFS mount at the same path on every node)",
                )
            )
    return problems


def _node_imports(modules: tuple[str, ...]) -> dict[str, str]:
    from lmplatform.train.deepspeed_engine import name_the_accelerator

    name_the_accelerator()  # DeepSpeed otherwise warns on import that it found only a CPU
    out = {}
    for mod in modules:
        try:
            __import__(mod)
        except Exception as e:
            out[mod] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return out


def _alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"])


def _on_every_node(fn, arg) -> dict[str, dict]:
    """Run fn(arg) once on every alive node; node id -> non-empty results."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0)(fn)
    refs = {
        n["NodeID"][:8]: remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(arg)
        for n in ray.nodes()
        if n["Alive"]
    }
    out = {}
    for node, ref in refs.items():
        try:
            res = ray.get(ref, timeout=120)
        except Exception as e:
            res = {"node": f"could not run a task there: {type(e).__name__}"}
        if res:
            out[node] = res
    return out


def check_imports(modules: tuple[str, ...] = ("torch", "deepspeed")) -> list[Problem]:
    return [
        Problem(
            "deepspeed",
            f"{mod} does not import on node {node}: {reason}",
            "install the project on every node (cluster.yaml setup_commands: pip install -e "
            "'.[all]') or add it to the runtime_env's pip",
        )
        for node, res in _on_every_node(_node_imports, modules).items()
        for mod, reason in res.items()
    ]


def check_gpus(wants: dict[str, float]) -> list[Problem]:
    """`wants`: what asks for GPUs -> GPUs per unit (e.g. {"pretrain (scaling.use_gpu)": 1})."""
    if not wants:
        return []
    import ray

    from lmplatform.runtime import cluster_can_grow

    have = ray.cluster_resources().get("GPU", 0)
    if have > 0 or cluster_can_grow("GPU"):
        return []
    return [
        Problem(
            "gpus",
            f"{what} asks for GPUs, but the cluster has none and no GPU node type to add",
            "run on a cluster with GPU workers (cluster.yaml) or set it to CPU "
            "(scaling.use_gpu=false / replica_gpus=0)",
        )
        for what in wants
    ]


def check_serving(serve, tasks: list[str] | None) -> list[Problem]:
    """The deploy stage's replicas fit the cluster (or the launcher may add nodes): found now,
    not after an hour of training, when Serve would wait for CPUs that never come."""
    import ray

    from lmplatform.serving.deployments import fit_problem, serve_tasks

    if serve is None:
        return []
    if tasks is None:
        try:
            tasks = serve_tasks(serve)  # every task with a promoted best
        except Exception:  # noqa: BLE001 - a registry problem is check_storage's to report
            return []
    problem = fit_problem(serve, tasks, ray.cluster_resources())
    return [Problem("serving", *problem)] if problem else []


def check_auth(address: str | None) -> list[Problem]:
    """A dashboard address (http://host:8265) that answers 401 needs a token we can send."""
    if not address or not address.startswith(("http://", "https://")):
        return []
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(address.rstrip("/") + "/api/version", timeout=5)
        return []
    except urllib.error.HTTPError as e:
        if e.code != 401:
            return []
    except Exception as e:
        return [
            Problem(
                "auth",
                f"the cluster at {address} does not answer ({type(e).__name__})",
                "start it (ray up cluster.yaml) or forward the dashboard port (ray dashboard cluster.yaml)",
            )
        ]
    from lmplatform.runtime import token_location

    if token_location():
        if os.environ.get("RAY_AUTH_MODE") != "token":
            return [
                Problem(
                    "auth",
                    f"the cluster at {address} wants a token and RAY_AUTH_MODE is not 'token'",
                    "export RAY_AUTH_MODE=token before ray job submit",
                )
            ]
        return []
    return [
        Problem(
            "auth",
            f"the cluster at {address} wants a token and none is set",
            "copy the head's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN) and export RAY_AUTH_MODE=token",
        )
    ]


def runtime_env_excludes(path: str | os.PathLike) -> list[str]:
    import yaml

    p = Path(path)
    if not p.is_file():
        return []
    return list((yaml.safe_load(p.read_text()) or {}).get("excludes") or [])


def gpu_wants(pretrain=None, finetunes=(), serve=None) -> dict[str, float]:
    wants = {}
    if pretrain is not None and pretrain.scaling.use_gpu:
        wants[f"pretraining {pretrain.name} (scaling.use_gpu)"] = 1
    for f in finetunes:
        if f.scaling.use_gpu:
            wants[f"fine-tuning {f.task.name} (scaling.use_gpu)"] = 1
    if serve is not None and serve.replica_gpus > 0:
        wants["serving (replica_gpus)"] = serve.replica_gpus
    return wants


def run_checks(
    *,
    working_dir: str | os.PathLike | None = None,
    excludes: list[str] = (),
    storage: dict[str, str] | None = None,
    data: dict[str, object] | None = None,
    gpus: dict[str, float] | None = None,
    serve=None,
    address: str | None = None,
    cluster: bool = True,
    pretraining: bool = True,
) -> list[Problem]:
    """All checks; the cluster ones (per-node storage, imports, GPUs) need Ray initialised."""
    problems: list[Problem] = []
    if working_dir is not None:
        problems += check_working_dir(working_dir, list(excludes))
    problems += check_auth(address)
    if storage:
        problems += check_storage(storage, cluster)
    if data:
        problems += check_data(data, cluster)
    if cluster:
        problems += check_gpus(gpus or {})
        problems += check_serving(serve, serve.tasks if serve is not None else None)
        # DeepSpeed (the `pretrain` extra) only where a pretraining stage will run
        problems += check_imports(("torch", "deepspeed") if pretraining else ("torch",))
    return problems
