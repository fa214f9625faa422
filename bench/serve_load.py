"""Serving load: our Ray Serve endpoint vs a plain FastAPI + uvicorn server, same model, side by side.

Both servers answer the same HTTP API (`lmplatform.serving.api`) with the same task model from
the registry on 127.0.0.1; the plain one calls the model once per request (no batching, one
uvicorn worker), ours batches dynamically (`@serve.batch`). A bounded async load generator
(aiohttp, closed loop: each client sends its next request when the last one returns) runs at
1, 8 and 32 concurrent clients against each server in turn, the same sentences (SST-2 dev) for
both, for `--seconds` per point after a warm-up.

    .venv/bin/python bench/serve_load.py [--task sst2] [--registry registry] [--seconds 10]

Last line: `throughput_ratio_c32=<ours req/s over plain's at 32 clients> p99_ms_c32=<ours>
added_p50_ms_c1=<ours p50 minus plain's at 1 client> errors=<failed requests, both servers, all
points>`. Goal (issue 17): ratio >= 1.2, p99 <= 150 ms, added <= 3 ms, 0 errors on 2 cores.

Ours runs as deployed by default: one hop (the task's replica answers its route) behind
HAProxy (`RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, set here before Ray
starts); `--proxy serve` uses Serve's Python proxy actor, `--two-hop` puts the task behind the
ingress. On a GPU node: `--replica-gpus 1` (the plain server then uses the GPU too).

`--int8` also deploys the task served in int8 (`quantize: {<task>: int8}`, at route prefix
/int8 on the same Serve) and loads it at each point beside ours; it then scores both models on
the task's whole dev set (its config, `jobs/configs/tasks/<task>.yaml`) and adds
`int8_throughput_ratio_c<top>=<int8 req/s over ours> int8_dev_change=<points>` to the last
line. Goal (issue 33): ratio >= 1.5, change >= -0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray runs its workers at nice 15; the plain server runs at 0. Same priority for both servers:
os.environ.setdefault("RAY_worker_niceness", "0")

PLAIN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {platform!r})
    import torch, uvicorn
    torch.set_num_threads({threads})
    from lmplatform.registry.store import Registry
    from lmplatform.serving.api import make_app
    from lmplatform.serving.local import LocalBackend
    from lmplatform.serving.loading import load_task
    p = load_task(Registry({registry!r}), {task!r})
    app = make_app(LocalBackend({{{task!r}: p}}), max_body_bytes=1_000_000)
    uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning", workers=1)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sentences(n: int = 512) -> list[str]:
    path = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
    rows = path.read_text().splitlines()[1:] if path.is_file() else []
    out = [r.split("\t")[0] for r in rows if len(r.split("\t")[0].split()) >= 8][:n]
    return out or [f"a sentence for the load test number {i}" for i in range(n)]


async def wait_ready(url: str, seconds: float = 300) -> None:
    import aiohttp

    deadline = time.time() + seconds
    async with aiohttp.ClientSession() as s:
        while time.time() < deadline:
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {seconds}s")


async def load(
    url: str, task: str | list[str], texts: list[str], clients: int, seconds: float, warmup: float
):
    """Closed-loop load: `clients` loops for warmup+seconds; latencies of the timed part.
    Several tasks: client k sends to task k mod their number."""
    import aiohttp

    tasks = [task] if isinstance(task, str) else task

    lat: list[float] = []
    errors = 0
    sent = 0
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds
    conn = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:

        async def client(k: int):
            nonlocal errors, sent
            i = k
            while time.perf_counter() < t_end:
                body = {"inputs": [texts[i % len(texts)]]}
                i += clients
                t0 = time.perf_counter()
                try:
                    async with s.post(f"{url}/v1/predict/{tasks[k % len(tasks)]}", json=body) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                t1 = time.perf_counter()
                if t0 >= t_measure:
                    sent += 1
                    if ok:
                        lat.append(t1 - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(client(k) for k in range(clients)))
    lat.sort()
    pct = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    return {
        "rps": len(lat) / seconds,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "errors": errors,
        "requests": sent,
        "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
    }


def int8_dev_change(args) -> str:
    """Both models (as trained, int8) scored on the task's whole dev set: `int8_dev_change=`."""
    from lmplatform.config import load_config
    from lmplatform.registry.store import Registry
    from lmplatform.serving.loading import load_task
    from lmplatform.tune.config import FinetuneJobConfig
    from lmplatform.tune.data import load_task_data
    from lmplatform.tune.trial import evaluate, task_encoder

    config = ROOT / "jobs" / "configs" / "tasks" / f"{args.task}.yaml"
    job = load_config(FinetuneJobConfig, config, [f"registry={args.registry}"])
    data = load_task_data(job)
    metric, scores = job.task.metric, {}
    for quantize in (None, "int8"):
        model = load_task(Registry(args.registry), args.task, quantize=quantize).model
        scores[quantize] = evaluate(model, data, data.dev_rows, task_encoder(data))[metric]
    print(
        f"dev {metric} on all {len(data.dev_rows)} rows: as trained {scores[None]:.4f}, "
        f"int8 {scores['int8']:.4f}",
        flush=True,
    )
    return f"int8_dev_change={100 * (scores['int8'] - scores[None]):+.2f}"


def main() -> None:
    from lmplatform.runtime import setup_process

    setup_process()  # before Ray or datasets is imported: loopback, token, console
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--registry", default=str(ROOT / "registry"))
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per point")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    p.add_argument(
        "--proxy",
        choices=["haproxy", "serve"],
        default="haproxy",
        help="Serve's HTTP front: HAProxy straight to the replicas (Ray's throughput mode) or "
        "Serve's Python proxy actor",
    )
    p.add_argument("--two-hop", action="store_true", help="every task behind the ingress")
    p.add_argument("--replica-gpus", type=float, default=0.0, help="GPU per model replica")
    p.add_argument("--int8", action="store_true", help="also the task served in int8")
    args = p.parse_args()
    if args.proxy == "haproxy":  # read when Serve starts: before Ray is
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        os.environ.setdefault("RAY_SERVE_HAPROXY_RETRY_ON", "conn-failure empty-response")

    from lmplatform.cli.common import require_model
    from lmplatform.registry.store import Registry

    # sst2 and the other shared-data tasks come from the shared-cpu pipeline (one command)
    require_model(args.registry, "tasks", f"{args.task}@best", builder="bert-shared-cpu")
    reg = Registry(args.registry)
    texts = sentences()
    levels = [int(c) for c in args.concurrency.split(",")]

    # plain FastAPI + uvicorn, its own process (as it would be deployed)
    plain_port = free_port()
    script = PLAIN.format(
        platform=str(ROOT / "platform"),
        threads=args.threads,
        registry=str(reg.uri),
        task=args.task,
        port=plain_port,
    )
    plain = subprocess.Popen([sys.executable, "-c", script])

    # ours: Ray Serve on a local Ray, one model replica with the same threads
    from lmplatform.runtime import init_ray
    from lmplatform.serving.config import ServeConfig

    init_ray(num_cpus=max(2, os.cpu_count() or 2), quiet=True)
    from ray import serve

    from lmplatform.serving.graph import deploy

    serve_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    cfg = ServeConfig(
        registry=str(reg.uri),
        tasks=[args.task],
        port=serve_port,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
        replica_cpus=args.threads,
        replica_gpus=args.replica_gpus,
        refresh_s=0,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        one_hop=not args.two_hop,
        app_name="bench",
    )
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    deploy(cfg, blocking=False)
    servers = {"plain": f"http://127.0.0.1:{plain_port}", "ours": f"http://127.0.0.1:{serve_port}"}
    if args.int8:
        int8 = {"app_name": "bench-int8", "route_prefix": "/int8", "quantize": {args.task: "int8"}}
        deploy(ServeConfig.model_validate({**cfg.model_dump(), **int8}), blocking=False)
        servers["int8"] = servers["ours"] + "/int8"
    try:
        for url in servers.values():
            asyncio.run(wait_ready(url))
        print(
            f"task {args.task} ({reg.best(args.task)}), {len(texts)} sentences, {args.seconds:.0f}s per "
            f"point, {args.threads} torch thread(s) per model process, ours max_batch_size "
            f"{args.max_batch_size} wait {args.batch_wait_ms} ms, "
            f"{'two hops' if args.two_hop else 'one hop'}, proxy {args.proxy}",
            flush=True,
        )
        print(
            f"{'clients':>7} {'server':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        )
        results: dict[tuple[str, int], dict] = {}
        for c in levels:
            for name in servers:
                r = asyncio.run(load(servers[name], args.task, texts, c, args.seconds, args.warmup))
                results[(name, c)] = r
                print(
                    f"{c:>7} {name:>6} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['errors']:>6}",
                    flush=True,
                )
        top, low = max(levels), min(levels)
        ratio = results[("ours", top)]["rps"] / max(results[("plain", top)]["rps"], 1e-9)
        added = results[("ours", low)]["p50"] - results[("plain", low)]["p50"]
        errors = sum(r["errors"] for r in results.values())
        line = (
            f"throughput_ratio_c{top}={ratio:.2f} p99_ms_c{top}={results[('ours', top)]['p99']:.1f} "
            f"added_p50_ms_c{low}={added:+.1f} errors={errors}"
        )
        if args.int8:
            gain = results[("int8", top)]["rps"] / max(results[("ours", top)]["rps"], 1e-9)
            line += f" int8_throughput_ratio_c{top}={gain:.2f} " + int8_dev_change(args)
        print(line)
    finally:
        plain.terminate()
        plain.wait(timeout=30)
        serve.shutdown()


if __name__ == "__main__":
    main()
