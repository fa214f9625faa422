"""Many tasks on one base: an adapter group beside a deployment per task, same tasks, one run.

Builds a temporary registry: a pretrained BERT of `--size` (random weights: memory and speed do
not depend on their values) with its WordPiece tokenizer, and `--max-tasks` LoRA adapter
versions on it (rank 8 on attention and feed-forward layers, random updates and heads), then

1. memory: one process loads N of the tasks as N whole models, another holds them as one
   adapter group (the base once, N adapters): the growth of each one's resident set, N = 1, 2,
   4, 8; and, computed from those, what N per-task replicas take (N x (a process's imports +
   one model), not measured with N processes) beside one group replica (imports + the group);
2. throughput: Ray Serve on 127.0.0.1, `--clients` closed-loop clients spread round robin over
   `--tasks` of them: a deployment per task (today's layout, one replica each), then one
   adapter-group deployment with `--group-replicas` replicas (1 and 2), `--seconds` each after
   a warm-up; and the per-task layout again with every task behind the ingress (`one_hop:
   false`), where the group always sits: a hop more per request, which the first layout
   does not pay. A replica without CPUs of its own runs one torch thread (Ray's default).

    .venv/bin/python bench/adapter_serving.py [--size mini] [--tasks 4] [--clients 32]

Last line: `memory_ratio_n<max>=<N per-task replicas' MiB over the group replica's>
throughput_ratio_c<clients>=<the best group layout's req/s over per-task req/s>
errors=<failed requests, every layout>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

MEMORY = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {platform!r})
    import torch
    from lmplatform.registry.store import Registry
    from lmplatform.serving.loading import load_task, _task_ref
    from lmplatform.serving.adapters import AdapterGroup, SharedBase, load_adapter

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    reg = Registry({registry!r})
    tasks = {tasks!r}
    before = rss()
    if {group!r}:
        meta = reg.metadata("tasks", tasks[0], "v0001")
        base = SharedBase(reg, meta["adapter"], tasks[0])
        g = AdapterGroup(base, {{t: load_adapter(reg, base, t, "v0001", _task_ref(reg, t, "v0001"))
                                for t in tasks}})
        g.smoke()
    else:
        ps = [load_task(reg, t, "v0001") for t in tasks]
    print(json.dumps({{"mib": rss() - before, "process_mib": before}}))
    """
)


def build(root: Path, size: str, n: int) -> Path:
    """A registry with a pretrained BERT and `n` adapter tasks on it."""
    import torch

    from lmplatform.models import BertConfig
    from lmplatform.models.io import save_pretrained, task_model_from_pretrained
    from lmplatform.models.lora import LoraLinear, LoraSpec, add_lora
    from lmplatform.models.tasks import build_pretraining_model
    from lmplatform.registry.adapters import save_adapter
    from lmplatform.registry.store import Registry
    from lmplatform.tokenization import TokenizerConfig, train_tokenizer
    from serve_load import sentences

    tok = train_tokenizer(
        TokenizerConfig(kind="wordpiece", vocab_size=8000), [sentences(5000)], root / "tok"
    )
    reg = Registry(root / "registry")
    torch.manual_seed(0)
    bert = build_pretraining_model(BertConfig(size=size, vocab_size=8000, max_seq_len=128))
    save_pretrained(bert, root / "base", tokenizer=tok)
    reg.publish("pretrained", "base", root / "base", {"kind": "pretrained"})
    folder = reg.local_path("pretrained", "base", "v0001")
    spec = LoraSpec(8, 16.0)
    for i in range(n):
        model = task_model_from_pretrained(folder, "classification", 2, layout="pooled")
        add_lora(model.encoder, spec)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, LoraLinear):
                    m.lora_b.normal_(0.0, 0.02)
        extra = {"labels": ["negative", "positive"], "max_seq_len": 128, "task_name": f"t{i}"}
        save_adapter(model, root / f"t{i}", spec, (reg, "base@v0001"), tok, extra)
        meta = {"kind": "task", "metric": "accuracy", "value": 0.5, "parent": "base@v0001"}
        reg.publish("tasks", f"t{i}", root / f"t{i}", meta)
        reg.promote(f"t{i}", "v0001", 0.5, force=True)
    return root / "registry"


def memory(registry: Path, tasks: list[str], group: bool) -> tuple[float, float]:
    """(resident set growth loading the tasks, the process's own before it), MiB."""
    script = MEMORY.format(
        platform=str(ROOT / "platform"), registry=str(registry), tasks=tasks, group=group
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return got["mib"], got["process_mib"]


def memory_table(registry: Path, names: list[str], args) -> float:
    """Models' memory in one process (whole models vs the group), and what N per-task replicas
    take between them (N processes, each its imports and one model) beside one group replica.
    Returns the replicas' ratio at the largest N."""
    one, process = memory(registry, names[:1], False)
    print(
        f"BERT {args.size}, LoRA rank 8 on attention + ffn; MiB resident (a replica process "
        f"holds {process:.0f} MiB of imports before any model)"
    )
    print(
        f"{'tasks':>5} {'N whole models':>14} {'adapter group':>13} {'ratio':>6} "
        f"{'N replicas':>10} {'group replica':>13} {'ratio':>6}"
    )
    ratio = float("nan")
    for n in sorted({1, 2, 4, args.max_tasks}):
        whole, group = memory(registry, names[:n], False)[0], memory(registry, names[:n], True)[0]
        replicas, grouped = n * (process + one), process + group
        ratio = replicas / grouped
        print(
            f"{n:>5} {whole:>14.0f} {group:>13.0f} {whole / group:>6.2f} {replicas:>10.0f} "
            f"{grouped:>13.0f} {ratio:>6.2f}",
            flush=True,
        )
    return ratio


def throughput(registry: Path, tasks: list[str], args) -> dict[str, dict]:
    from ray import serve

    from lmplatform.runtime import init_ray
    from lmplatform.serving.config import ServeConfig
    from lmplatform.serving.graph import delete, deploy
    from serve_load import free_port, load, sentences, wait_ready

    init_ray(num_cpus=max(2, os.cpu_count() or 2), quiet=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    texts = sentences()
    common = dict(
        registry=str(registry),
        tasks=tasks,
        port=port,
        max_batch_size=32,
        batch_wait_timeout_s=0.0,
        replica_cpus=0,
        refresh_s=0,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        app_name="bench",
    )
    results = {}
    layouts = [("per-task", {}), ("per-task, 2 hops", {"one_hop": False})] + [
        (
            f"group x{n}",
            {"adapter_groups": [tasks], "autoscaling": {"min_replicas": n, "max_replicas": n}},
        )
        for n in args.group_replicas
    ]
    for name, extra in layouts:
        cfg = ServeConfig(**{**common, **extra})
        deploy(cfg, blocking=False)
        asyncio.run(wait_ready(url))
        results[name] = asyncio.run(load(url, tasks, texts, args.clients, args.seconds, 3.0))
        delete(cfg)
    serve.shutdown()
    return results


def main() -> None:
    from lmplatform.runtime import setup_process

    setup_process()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="mini", choices=["debug", "mini", "small", "base"])
    p.add_argument("--max-tasks", type=int, default=8)
    p.add_argument("--tasks", type=int, default=4, help="tasks under load")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument(
        "--group-replicas",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2],
        help="replicas of the group deployment, one layout each (comma-separated)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as td:
        registry = build(Path(td), args.size, args.max_tasks)
        names = [f"t{i}" for i in range(args.max_tasks)]
        ratio = memory_table(registry, names, args)
        res = throughput(registry, names[: args.tasks], args)
    print(f"{args.clients} clients over {args.tasks} tasks, {args.seconds:.0f} s")
    for name, r in res.items():
        print(
            f"  {name:>16}: {r['rps']:7.1f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms"
            f"  errors {r['errors']}"
        )
    tp = max(r["rps"] for k, r in res.items() if k.startswith("group")) / res["per-task"]["rps"]
    errors = sum(r["errors"] for r in res.values())
    print(
        f"memory_ratio_n{args.max_tasks}={ratio:.2f} throughput_ratio_c{args.clients}={tp:.2f} "
        f"errors={errors}"
    )


if __name__ == "__main__":
    main()
