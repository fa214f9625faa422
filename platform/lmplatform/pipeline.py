"""The whole path as one resumable job: tokenizer -> pretraining -> fine-tuning search per task ->
promotion -> deployment, then a run report.

Each stage's config is resolved and hashed; `state.json` (under `output_dir/<pipeline>/`,
written atomically after every stage) records the hash and what the stage produced. A stage
whose hash is unchanged and whose output still exists (the registry version, the running Serve
application) is skipped and says so; a changed config re-runs that stage and everything after
it, because later stages' configs include the earlier outputs (a task's `parent` is the exact
pretrained version, the deployment's tasks are the promoted ones).
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from typing import TYPE_CHECKING

from pydantic import Field

from lmplatform import storage
from lmplatform.config import StrictModel, load_config
from lmplatform.jobconfig import FinetuneJobConfig, JobConfig, PretrainJobConfig, ServeConfig

if TYPE_CHECKING:
    from lmplatform.registry import Registry


class StageRef(StrictModel):
    config: str
    """A job YAML, relative to the project root (the job's working directory)."""
    overrides: list[str] = Field(default_factory=list)
    """key=value overrides applied on top of it."""


class PipelineConfig(JobConfig):
    """A whole pipeline; its `output_dir`, `registry` and `tracking` are every stage's."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    """Pipeline name: its state and report live in output_dir/<name>/."""
    pretrain: StageRef
    """Pretraining job config (jobs/configs/pretrain/*.yaml)."""
    tasks: list[StageRef] = Field(default_factory=list)
    """Fine-tuning job configs; each task's parent becomes the pretrained model above."""
    task_overrides: list[str] = Field(default_factory=list)
    """key=value overrides for every task (e.g. a quick run: search.num_samples=2)."""
    serve: StageRef | None = None
    """Serve config (serve/config.yaml) to deploy the promoted tasks with; null: no deployment."""
    examples: dict[str, list] = Field(default_factory=dict)
    """task -> example inputs, sent once the endpoints are up (printed and put in the report)."""


def config_hash(cfg) -> str:
    data = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
    data.pop("tracking", None)  # where a run is logged does not change what it computes
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _log(msg: str) -> None:
    print(f"[pipeline] {msg}", flush=True)


class State:
    """state.json in the pipeline's folder (a local path or a URI), rewritten whole after every
    stage."""

    def __init__(self, path: str):
        self.path = path
        self.data: dict = storage.read_json(path) if storage.exists(path) else {}

    def done(self, stage: str, h: str) -> dict | None:
        s = self.data.get(stage)
        return s if s and s.get("hash") == h else None

    def record(self, stage: str, h: str, **result) -> None:
        self.data[stage] = {"hash": h, "finished": time.time(), **result}
        storage.write_json(self.path, self.data)


def resolve(
    cfg: PipelineConfig,
) -> tuple[PretrainJobConfig, list[FinetuneJobConfig], ServeConfig | None]:
    """Every stage's config, validated up front: a typo in the last task fails before pretraining."""
    common = [f"output_dir={cfg.output_dir}", f"registry={cfg.registry}"]
    if cfg.tracking is not None:
        common.append(f"tracking={json.dumps(cfg.tracking.model_dump(mode='json'))}")
    pre = load_config(PretrainJobConfig, cfg.pretrain.config, [*cfg.pretrain.overrides, *common])
    tasks = [
        load_config(
            FinetuneJobConfig,
            t.config,
            [*cfg.task_overrides, *t.overrides, *common, f"parent={pre.name}"],
        )
        for t in cfg.tasks
    ]
    names = [t.task.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"pipeline {cfg.name}: a task appears twice in {names}")
    serve_cfg = None
    if cfg.serve is not None:
        from lmplatform.serving.deployments import read_serve_config

        serve_cfg = read_serve_config(
            cfg.serve.config, [*cfg.serve.overrides, f"registry={cfg.registry}"]
        ).model_copy(update={"tasks": names})
    return pre, tasks, serve_cfg


def run(cfg: PipelineConfig, force: bool = False) -> dict:
    """Run (or resume) the pipeline; returns its state."""
    from lmplatform.registry import Registry

    pre, tasks, serve_cfg = resolve(cfg)
    state = State(storage.join(cfg.output_dir, cfg.name, "state.json"))
    reg = Registry(cfg.registry)
    t_all = time.time()
    prepare_stage(pre, state, force)
    parent = pretrain_stage(pre, state, reg, force)
    for job in tasks:
        finetune_stage(job.model_copy(update={"parent": parent}), state, reg, force)
    if serve_cfg is not None:
        deploy(serve_cfg, state)
    state.data["seconds_this_run"] = time.time() - t_all
    return state.data


def prepare_stage(pre: PretrainJobConfig, state: State, force: bool) -> None:
    """The tokenizer and the pretraining examples (reused by content key inside `prepare`)."""
    # the tokenizer and examples do not depend on how pretraining trains (train, scaling)
    h = config_hash(
        {k: v for k, v in pre.model_dump(mode="json").items() if k not in ("train", "scaling")}
    )
    if (s := state.done("prepare", h)) and not force and storage.exists(s["tokenizer"]):
        _log(f"prepare: skipped (same config; tokenizer {s['tokenizer_hash']})")
        return
    from lmplatform.prepare import prepare

    t0 = time.time()
    p = prepare(pre)
    state.record(
        "prepare",
        h,
        tokenizer=p.tokenizer_uri,
        tokenizer_hash=p.tokenizer_hash,
        examples=p.manifest.get("examples"),
        seconds=time.time() - t0,
    )
    _log(f"prepare: done in {time.time() - t0:.0f}s")


def pretrain_stage(pre: PretrainJobConfig, state: State, reg: Registry, force: bool) -> str:
    """Pretraining, registered; returns the pretrained version every task starts from
    (`name@version`)."""
    h = config_hash(pre)
    s = state.done("pretrain", h)
    if s and not force and s["version"] in reg.versions("pretrained", pre.name):
        _log(f"pretrain: skipped (same config; pretrained/{pre.name}@{s['version']})")
        return f"{pre.name}@{s['version']}"
    from lmplatform.pretrain import export_and_register, run_pretraining

    t0 = time.time()
    prepared, result = run_pretraining(pre)
    name, version, _ = export_and_register(pre, prepared, result)
    meta = reg.metadata("pretrained", name, version)
    state.record(
        "pretrain",
        h,
        name=name,
        version=version,
        metrics={  # what summarizes a run of this family's objective (BERT: MLM and NSP)
            k: meta.get("metrics", {}).get(k) for k in (*pre.objective.metrics, "step")
        },
        run_dir=prepared.run_dir,
        seconds=time.time() - t0,
    )
    _log(f"pretrain: registered pretrained/{name}@{version} in {time.time() - t0:.0f}s")
    return f"{pre.name}@{version}"


def finetune_stage(job: FinetuneJobConfig, state: State, reg: Registry, force: bool) -> None:
    """One task's search, then its best checkpoint published and promoted if it wins."""
    from lmplatform.tune.data import load_task_data
    from lmplatform.tune.promotion import promote
    from lmplatform.tune.search import format_table, run_search

    stage = f"finetune:{job.task.name}"
    h = config_hash(job)
    s = state.done(stage, h)
    if s and not force and s["version"] in reg.versions("tasks", job.task.name):
        _log(f"{stage}: skipped (same config; tasks/{job.task.name}@{s['version']})")
        return
    t0 = time.time()
    data = load_task_data(job)
    sr = run_search(job, data, verbose=0)
    print(format_table(sr.table, job.task.metric), flush=True)
    res = promote(sr)
    state.record(
        stage,
        h,
        version=res["version"],
        metric=res["metric"],
        value=res["value"],
        promoted=res["promoted"],
        best=reg.best(job.task.name),
        trials=len(sr.table),
        run_dir=sr.run_dir,
        seconds=time.time() - t0,
    )
    verdict = "promoted to best" if res["promoted"] else f"best stays {reg.best(job.task.name)}"
    _log(
        f"{stage}: tasks/{job.task.name}@{res['version']} {res['metric']} {res['value']:.4f} "
        f"({verdict}) in {time.time() - t0:.0f}s"
    )


def deploy(cfg: ServeConfig, state: State) -> None:
    from ray import serve

    from lmplatform.serving.deployments import run_app

    h = config_hash(cfg)
    running = False
    try:
        st = serve.status().applications.get(cfg.app_name)
        running = st is not None and st.status == "RUNNING"
    except Exception:
        running = False
    if state.done("deploy", h) and running:
        _log(f"deploy: skipped (application {cfg.app_name} already running with this config)")
        return
    t0 = time.time()
    url = run_app(cfg)
    state.record("deploy", h, url=url, tasks=cfg.tasks, seconds=time.time() - t0)
    _log(f"deploy: {len(cfg.tasks or [])} task(s) at {url} in {time.time() - t0:.0f}s")


def try_examples(cfg: PipelineConfig, url: str) -> dict[str, dict]:
    """One request per task with the configured example inputs; task -> response JSON."""
    import urllib.request

    out = {}
    for task, inputs in cfg.examples.items():
        body = json.dumps({"inputs": inputs}).encode()
        req = urllib.request.Request(
            f"{url}/v1/predict/{task}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            out[task] = json.loads(r.read())
    return out


# ----------------------------------------------------------------------------- report


def write_report(cfg: PipelineConfig, state: dict, answers: dict | None = None) -> str:
    """report.html next to state.json, with every image copied beside it (relative links, so
    the folder works wherever it is downloaded to)."""
    out = storage.join(cfg.output_dir, cfg.name)
    parts = [
        *_report_head(cfg.name),
        *_pretrain_section(state.get("pretrain"), out),
        *_finetune_sections(state, cfg.registry, out),
        *_endpoints_section(state.get("deploy")),
        *_examples_section(answers),
    ]
    path = storage.join(out, "report.html")
    storage.write_text(path, "\n".join(parts))
    return path


def _report_image(out: str, src: str, name: str) -> str | None:
    """`src` copied into the report's folder; its link from report.html (None: no such image)."""
    if not storage.exists(src):
        return None
    storage.copy(src, storage.join(out, "report_files", name))
    return f"report_files/{name}"


def _report_head(name: str) -> list[str]:
    e = html.escape
    return [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>pipeline {e(name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}</style>",
        f"<h1>Pipeline {e(name)}</h1>",
    ]


def _pretrain_section(pre: dict | None, out: str) -> list[str]:
    """The pretrained version, its final metrics and its loss curve."""
    if not pre:
        return []
    e = html.escape
    m = pre.get("metrics", {})
    parts = [
        "<h2>Pretraining</h2>",
        f"<p>pretrained/{e(pre['name'])}@{e(pre['version'])}: "
        + ", ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, int | float))
        + f" ({pre.get('seconds', 0):.0f} s)</p>",
    ]
    src = _report_image(out, storage.join(pre["run_dir"], "loss_curve.png"), "pretrain_loss.png")
    if src:
        parts.append(f"<img src='{src}' alt='pretraining loss and throughput'>")
    return parts


def _finetune_sections(state: dict, registry: str, out: str) -> list[str]:
    """The winners of every task's search in one table, then each task's details."""
    tasks = {k.split(":", 1)[1]: s for k, s in state.items() if k.startswith("finetune:")}
    if not tasks:
        return []
    from lmplatform.registry import Registry

    e = html.escape
    rows = "".join(
        f"<tr><td>{e(task)}</td><td>{e(s['metric'])}</td><td>{s['value']:.4f}</td>"
        f"<td>v{e(s['version'][1:])}</td><td>{e(str(s.get('best')))}</td><td>{s['trials']}</td></tr>"
        for task, s in tasks.items()
    )
    parts = [
        "<h2>Fine-tuning winners</h2><table><tr><th>task</th><th>metric</th><th>dev value</th>"
        "<th>version</th><th>best</th><th>trials</th></tr>" + rows + "</table>"
    ]
    reg = Registry(registry)
    for task, s in tasks.items():
        parts += _task_details(task, s, reg, out)
    return parts


def _task_details(task: str, s: dict, reg: Registry, out: str) -> list[str]:
    """A task's published model per class, the data it was trained on, and its trials plot;
    each only if its run left it."""
    from lmplatform.registry import RegistryError

    e = html.escape
    parts = []
    try:
        per = reg.metadata("tasks", task, s["version"]).get("per_class") or {}
    except (RegistryError, FileNotFoundError):
        per = {}
    if per:
        parts.append(_per_class_table(task, s["version"], per))
    report_json = storage.join(s["run_dir"], "data_report.json")
    if storage.exists(report_json):
        parts.append(_data_section(task, json.loads(storage.read_text(report_json))))
    src = _report_image(out, storage.join(s["run_dir"], "trials.png"), f"trials_{task}.png")
    if src:
        parts.append(f"<h3>{e(task)}: trials</h3><img src='{src}' alt='trials of {e(task)}'>")
    return parts


def _endpoints_section(dep: dict | None) -> list[str]:
    if not dep:
        return []
    e = html.escape
    url = e(dep["url"])
    return [
        "<h2>Endpoints</h2><ul>",
        f"<li>GET {url}/v1/tasks, GET {url}/healthz, docs {url}/docs</li>",
        *(f"<li>POST {url}/v1/predict/{e(t)}</li>" for t in dep.get("tasks") or []),
        "</ul>",
    ]


def _examples_section(answers: dict | None) -> list[str]:
    if not answers:
        return []
    e = html.escape
    return [
        "<h2>Example requests</h2>",
        *(
            f"<h3>{e(t)}</h3><pre>{e(json.dumps(a, indent=1)[:3000])}</pre>"
            for t, a in answers.items()
        ),
    ]


def _data_section(task: str, report: dict) -> str:
    """The data a task was trained and selected on: rows read and dropped (why, where), the
    label distribution, token lengths and the share `max_seq_len` cuts, per split."""
    e = html.escape
    out = [f"<h3>{e(task)}: data</h3><table><tr><th></th>"]
    splits = [k for k in ("train", "dev") if k in report]
    out.append("".join(f"<th>{k}</th>" for k in splits) + "</tr>")

    def line(name: str, cell) -> None:
        out.append(
            f"<tr><td>{e(name)}</td>"
            + "".join(f"<td>{cell(report[k])}</td>" for k in splits)
            + "</tr>"
        )

    line("files", lambda r: e(f"{r['source']} ({r['format']}, from {r['format_from']})"))
    line("rows read", lambda r: r["rows_read"])
    line(
        "rows dropped",
        lambda r: (
            f"{r['rows_dropped']}"
            + "".join(f"<br>{e(k)}: {v}" for k, v in r["dropped_by_reason"].items())
        ),
    )
    line("labels", lambda r: "<br>".join(f"{e(k)}: {v}" for k, v in r["labels"].items()) or "–")
    for side in ("input", "source", "target"):
        if all(f"{side}_tokens" in report[k] for k in splits):
            line(
                f"{side} tokens (p50 / p95 / p99 / max)",
                lambda r, s=side: " / ".join(
                    str(r[f"{s}_tokens"][q]) for q in ("p50", "p95", "p99", "max")
                ),
            )
    line("over max_seq_len", lambda r: f"{r['truncated_fraction']:.2%} (of {r['max_seq_len']})")
    out.append("</table>")
    for k in splits:
        if report[k]["first_dropped"]:
            out.append(
                f"<p>{k}: first dropped rows</p><pre>"
                + e("\n".join(report[k]["first_dropped"]))
                + "</pre>"
            )
    return "".join(out)


def _per_class_table(task: str, version: str, per: dict) -> str:
    """Dev precision/recall/F1/support per class of the published model: where it fails."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(label)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>"
        for label, v in per.items()
    )
    return (
        f"<h3>{e(task)} {e(version)}: dev scores per class</h3><table><tr><th>class</th>"
        "<th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>" + rows + "</table>"
    )
