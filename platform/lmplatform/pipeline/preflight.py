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
- fit: each training stage's workers against the node types (the cluster launcher's, on a head
  it manages; else the nodes alive): one worker must fit a node type, and all of them the
  node types' max_workers;
- GPU nodes: a task asking for one GPU (the autoscaler starts a GPU node for it, which may take
  minutes) checks that torch sees CUDA there, bf16 where a stage trains in it, and, where a
  stage has several GPU workers, NCCL between two of them; every per-node check below then
  reaches that node too;
- GPUs for serving: asked for on a cluster that has none and cannot autoscale any;
- DeepSpeed (and torch) importable on every node.

`run_on_cluster` runs all of it as a Ray job on a cluster named by its dashboard address, so a
laptop checks the cluster, not itself.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
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
    """Whether Ray leaves `rel` (a file, or a folder: either spelling) out of the job's
    working_dir: the same gitignore-style matcher its packaging uses (a leading '/' anchors a
    pattern at the root; `registry/` alone would also drop `platform/lmplatform/registry/`)."""
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", patterns)
    return spec.match_file(rel) or spec.match_file(rel.rstrip("/") + "/")


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
                    f"add '/{heavy}/' to excludes in the runtime_env (jobs/runtime_env.yaml)",
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


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _res(resources: dict[str, float] | None) -> str:
    """{CPU 8, GPU 1, nvme 1}: what a node has or a worker asks for, less Ray's bookkeeping."""
    if resources is None:
        return "{resources not listed}"
    shown = {
        k: v
        for k, v in resources.items()
        if not k.startswith("node:") and k not in ("memory", "object_store_memory")
    }
    order = sorted(shown, key=lambda k: (k not in ("CPU", "GPU"), k))
    return "{" + ", ".join(f"{k} {shown[k]:g}" for k in order) + "}"


@dataclass
class Workers:
    """One training stage's workers, as the stage will ask Ray for them."""

    stage: str
    """What the report calls it: 'pretraining bert-base'."""
    count: int
    """Workers placed at once (an elastic run's minimum)."""
    bundle: dict[str, float] = field(default_factory=dict)
    """What each worker reserves: {"CPU": 4, "GPU": 1, ...}."""
    bf16: bool = False
    """It trains in bf16, which its GPUs must support."""

    @property
    def gpus(self) -> float:
        return self.bundle.get("GPU", 0)


def _bundle(scaling, custom: bool) -> dict[str, float]:
    # as train/trainer.py (custom resources included) and tune/search.py (not) ask for it
    out = {**(scaling.resources_per_worker if custom else {}), "CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        out["GPU"] = 1
    return out


def worker_wants(pretrain=None, finetunes=(), adapts=()) -> list[Workers]:
    """Each training stage's workers (pretraining, then each task's adaptive pretraining, then
    the searches); a search's are one trial's (its other trials queue)."""
    out = []
    for pre in [*([pretrain] if pretrain is not None else []), *adapts]:
        s = pre.scaling
        out.append(
            Workers(
                f"pretraining {pre.name}",
                s.min_workers or s.num_workers,
                _bundle(s, custom=True),
                pre.train.precision == "bf16",
            )
        )
    for f in finetunes:
        s = f.scaling
        out.append(
            Workers(
                f"fine-tuning {f.task.name} (one trial)",
                s.min_workers or s.num_workers,
                _bundle(s, custom=f.trials_on_ray_train),
                f.train.precision == "bf16",
            )
        )
    return out


@dataclass
class NodeType:
    """Nodes a stage's workers may be placed on: up to `count` of them, `resources` each."""

    name: str
    resources: dict[str, float] | None
    """None: the launcher's config does not list them."""
    count: int
    launched: bool = False
    """A node type the cluster launcher adds (`count` is its max_workers)."""

    def __str__(self) -> str:
        more = f" x max_workers {self.count}" if self.launched else ""
        return f"{self.name} {_res(self.resources)}{more}"


def cluster_node_types() -> list[NodeType]:
    """The head and the node types the cluster launcher may add (its config on the head); on
    a cluster it does not manage, the nodes alive now."""
    import ray

    from lmplatform.runtime import launcher_node_types

    alive = [n for n in ray.nodes() if n["Alive"]]
    launcher = launcher_node_types()
    if not launcher:
        return [NodeType(f"node {n['NodeID'][:8]}", n["Resources"], 1) for n in alive]
    head = [
        NodeType("head", n["Resources"], 1)
        for n in alive
        if "node:__internal_head__" in n["Resources"]
    ]
    return head + [
        NodeType(name, t.get("resources"), int(t.get("max_workers", 0)), launched=True)
        for name, t in launcher.items()
    ]


def _per_node(have: dict[str, float] | None, bundle: dict[str, float]) -> int | None:
    """How many workers of `bundle` one node of `have` holds (None: unknown)."""
    if have is None:
        return None
    needs = [(have.get(r, 0), need) for r, need in bundle.items() if need > 0]
    return min((int(h / need + 1e-9) for h, need in needs), default=2**31)


def fit_problems(workers: list[Workers], types: list[NodeType]) -> list[Problem]:
    """Each stage's workers against the node types: one worker must fit a node type, and all
    of them the nodes the cluster has or may add. A type whose resources are unknown passes."""
    listed = "; ".join(str(t) for t in types)
    return [
        Problem("fit", f"{w.stage}: {found[0]}; node types: {listed}", found[1])
        for w in workers
        if (found := _misfit(w, types))
    ]


def _misfit(w: Workers, types: list[NodeType]) -> tuple[str, str] | None:
    """(what does not fit, the fix), or None."""
    holds = [(t, _per_node(t.resources, w.bundle)) for t in types if t.count > 0]
    if any(n is None for _, n in holds):
        return None
    capacity = sum(n * t.count for t, n in holds)
    if capacity == 0:
        shrink = "scaling.cpus_per_worker, scaling.resources_per_worker"
        shrink += ", scaling.use_gpu=false" if w.gpus else ""
        return (
            f"one worker of {_res(w.bundle)} fits no node the cluster has or may add",
            "add a node type that holds one (cluster.yaml available_node_types, max_workers > 0)"
            f" or shrink the worker ({shrink})",
        )
    if capacity < w.count:
        per = ", ".join(f"{n} per {t.name} node x {t.count}" for t, n in holds if n)
        return (
            f"{w.count} workers of {_res(w.bundle)} do not fit: the cluster holds at most "
            f"{capacity} ({per})",
            f"set scaling.num_workers={capacity} (or an elastic scaling.min_workers), or raise "
            "max_workers of a node type that holds them in cluster.yaml",
        )
    return None


def check_fit(workers: list[Workers]) -> list[Problem]:
    return fit_problems(workers, cluster_node_types())


GPU_TIMEOUT_S = 900.0
"""How long the GPU checks wait for a GPU node: a cold one takes minutes to start."""

_GPU_FIXES = {
    "cuda": "use a node image whose torch is built for CUDA and sees the GPUs (the image "
    "cluster.yaml pulls; nvidia-smi on that node)",
    "bf16": "train.precision=fp16 (or fp32) on this GPU, or a node type with Ampere or newer GPUs",
}


def check_gpu_nodes(workers: list[Workers], timeout_s: float = GPU_TIMEOUT_S) -> list[Problem]:
    """On a node with a GPU (a task asking for one makes the autoscaler start one): torch sees
    CUDA, bf16 where a stage trains in it, NCCL where a stage has several GPU workers."""
    gpu = [w for w in workers if w.gpus > 0]
    if not gpu:
        return []
    import ray
    from ray.exceptions import GetTimeoutError

    names = ", ".join(w.stage for w in gpu)
    deadline = time.monotonic() + timeout_s
    ref = ray.remote(num_cpus=0, num_gpus=1, max_retries=0)(_cuda_report).remote(
        any(w.bf16 for w in gpu)
    )
    try:
        node, kind, problem = ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        ray.cancel(ref)
        return [_no_gpu_in_time(names, timeout_s)]
    except Exception as e:  # noqa: BLE001 - the probe's own failure is the finding
        node, kind, problem = "?", "cuda", f"the probe task failed: {_why(e)}"
    if problem:
        return [Problem("gpus", f"{names}: on GPU node {node}, {problem}", _GPU_FIXES[kind])]
    several = [w.stage for w in gpu if w.count > 1]
    if several and (reason := probe_nccl(max(deadline - time.monotonic(), 60))):
        return [
            Problem(
                "gpus",
                f"{', '.join(several)}: NCCL between two GPU workers fails: {reason}",
                "use a node image with torch's NCCL working on these GPUs (NCCL_DEBUG=INFO in "
                "the runtime_env's env_vars says why)",
            )
        ]
    return []


def _no_gpu_in_time(names: str, timeout_s: float) -> Problem:
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if have > 0:  # GPU nodes are up, and busy
        return Problem(
            "gpus",
            f"{names}: no GPU became free within {timeout_s:.0f} s (the cluster's {have:g} "
            "are all in use)",
            "run preflight while the GPUs are free, or wait longer (--gpu-timeout)",
        )
    return Problem(
        "gpus",
        f"{names}: no node with a GPU started within {timeout_s:.0f} s (a cold GPU node takes "
        "minutes to start)",
        "check the head's IAM rights to launch instances (docs/clusters.md) and the GPU node "
        "type's max_workers; `ray status` and the head's monitor log "
        "(/tmp/ray/session_latest/logs/monitor.*) say why; or wait longer (--gpu-timeout)",
    )


def _cuda_report(bf16: bool) -> tuple[str, str | None, str | None]:
    """(node, problem kind, problem): this node's GPU as torch sees it."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:8]
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return node, "cuda", f"torch does not import: {_why(e)}"
    if not torch.cuda.is_available():
        built = (
            f"built for CUDA {torch.version.cuda}"
            if torch.version.cuda
            else "a CPU-only build: torch.version.cuda is None"
        )
        return (
            node,
            "cuda",
            f"torch.cuda.is_available() is False (torch {torch.__version__}, {built})",
        )
    if bf16 and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name()
        return node, "bf16", f"{name} does not support bf16 (train.precision=bf16)"
    return node, None, None


def probe_nccl(timeout_s: float, backend: str = "nccl") -> str | None:
    """None if two GPU workers, packed as Ray Train packs them, form a `backend` process group
    and all-reduce; else why, naming their nodes."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"GPU": 1}] * 2, strategy="PACK")
    peers = []
    try:
        if not pg.wait(timeout_seconds=max(int(timeout_s), 1)):
            return f"two GPUs were not free at once within {timeout_s:.0f} s"
        actor = ray.remote(num_cpus=0, num_gpus=1)(_Peer)
        peers = [
            actor.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=i
                )
            ).remote()
            for i in range(2)
        ]
        url = ray.get(peers[0].rendezvous.remote(), timeout=120)
        reasons = ray.get(
            [p.join.remote(url, r, backend) for r, p in enumerate(peers)], timeout=300
        )
        return "; ".join(r for r in reasons if r) or None
    except Exception as e:  # noqa: BLE001 - the probe's own failure is the finding
        return _why(e)
    finally:
        for p in peers:
            ray.kill(p)
        remove_placement_group(pg)


class _Peer:
    """One of the two processes of the NCCL check, on a GPU of its own."""

    def rendezvous(self) -> str:
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join(self, url: str, rank: int, backend: str) -> str | None:
        import datetime

        import ray
        import torch
        import torch.distributed as dist

        node = ray.get_runtime_context().get_node_id()[:8]
        try:
            dist.init_process_group(
                backend,
                init_method=url,
                rank=rank,
                world_size=2,
                timeout=datetime.timedelta(seconds=120),
            )
            x = torch.ones(1, device="cuda" if backend == "nccl" else "cpu")
            dist.all_reduce(x)
            return (
                None
                if x.item() == 2
                else f"rank {rank} on node {node}: all_reduce gave {x.item():g}"
            )
        except Exception as e:  # noqa: BLE001 - the finding
            return f"rank {rank} on node {node}: {_why(e)}"
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def cluster_summary() -> str:
    """The nodes alive and what each has: where the cluster checks ran."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    listed = "; ".join(f"{n['NodeID'][:8]} {_res(n['Resources'])}" for n in nodes)
    return f"{len(nodes)} node(s) alive: {listed}"


def run_on_cluster(
    address: str, argv: list[str], working_dir, runtime_env, timeout_s: float
) -> int:
    """`python jobs/preflight.py ARGV --on-cluster` as a Ray job on the cluster whose dashboard
    is `address`, shipping what `ray job submit --working-dir --runtime-env` would; prints its
    output as it comes and returns its exit code (1 when it ends without one)."""
    import yaml
    from ray.job_submission import JobStatus, JobSubmissionClient

    env = {}
    if Path(runtime_env).is_file():
        env = dict(yaml.safe_load(Path(runtime_env).read_text()) or {})
    try:
        client = JobSubmissionClient(address)
        job = client.submit_job(
            entrypoint=shlex.join(["python", "jobs/preflight.py", *argv, "--on-cluster"]),
            runtime_env={**env, "working_dir": str(working_dir)},
        )
    except Exception as e:  # noqa: BLE001 - one line, not Ray's traceback
        print(f"preflight: {_not_submitted(address, e)}")
        return 2
    print(f"preflight: running on the cluster at {address} as Ray job {job}", flush=True)
    status = _follow(client, job, timeout_s)
    if status == JobStatus.SUCCEEDED:
        return 0
    if status is None:
        client.stop_job(job)
        print(f"preflight: job {job} did not end within {timeout_s:.0f} s: stopped it")
        return 1
    info = client.get_job_info(job)
    if not info.driver_exit_code:
        print(f"preflight: job {job} {status.value}: {info.message}")
    return info.driver_exit_code or 1


def _not_submitted(address: str, e: Exception) -> Problem:
    if type(e).__name__ == "AuthenticationError":  # a token, not the cluster's
        return Problem(
            "auth",
            f"the cluster at {address} refused this machine's token ({_why(e)})",
            "copy the head's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN) and export "
            "RAY_AUTH_MODE=token",
        )
    return Problem(
        "cluster",
        f"the checks could not be submitted to {address} ({_why(e)})",
        "give the dashboard's address (`ray dashboard cluster.yaml` forwards it to "
        "http://127.0.0.1:8265)",
    )


def _follow(client, job: str, timeout_s: float):
    """Print the job's new output every 2 s until it ends: its status (None: still running)."""
    deadline, shown = time.monotonic() + timeout_s, 0
    while True:
        status = client.get_job_status(job)
        logs = client.get_job_logs(job)  # after the status: a finished job's logs are whole
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        if status.is_terminal():
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(2)


def check_serving(serve, tasks: list[str] | None) -> list[Problem]:
    """The deploy stage's replicas fit the cluster (or the launcher may add nodes): found now,
    not after an hour of training, when Serve would wait for CPUs that never come."""
    import ray

    from lmplatform.serving.graph import fit_problem, serve_tasks

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


def check_searches(finetunes=()) -> list[Problem]:
    """What a TPE search needs on this (the driver's) node before any stage runs: optuna, and
    the earlier search its `warm_start_from` names, of the same task."""
    import importlib.util

    from lmplatform.config import ConfigError
    from lmplatform.tune.search import told_trials

    problems = []
    for job in finetunes:
        if job.search.algorithm != "tpe":
            continue
        if importlib.util.find_spec("optuna") is None:
            fix = "pip install 'lmplatform[search]' where the pipeline runs"
            problems.append(Problem("search", f"{job.name}: algorithm=tpe needs optuna", fix))
            continue
        try:
            told_trials(job)
        except ConfigError as e:
            problems.append(Problem("search", f"{job.name}: {e}", "name an earlier search"))
    return problems


def run_checks(
    *,
    working_dir: str | os.PathLike | None = None,
    excludes: list[str] = (),
    storage: dict[str, str] | None = None,
    data: dict[str, object] | None = None,
    gpus: dict[str, float] | None = None,
    workers: list[Workers] = (),
    gpu_timeout_s: float = GPU_TIMEOUT_S,
    serve=None,
    address: str | None = None,
    cluster: bool = True,
    pretraining: bool = True,
    finetunes=(),
) -> list[Problem]:
    """All checks; the cluster ones (fit, GPU nodes, per-node storage, imports, GPUs) need Ray
    initialised."""
    problems: list[Problem] = check_searches(finetunes)
    if working_dir is not None:
        problems += check_working_dir(working_dir, list(excludes))
    problems += check_auth(address)
    if cluster and workers:
        fit = check_fit(list(workers))
        # before the per-node checks: the GPU node started here is then one of every node
        problems += fit or check_gpu_nodes(list(workers), gpu_timeout_s)
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
