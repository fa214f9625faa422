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

import json
import time
from typing import TYPE_CHECKING

from lmplatform import storage
from lmplatform.config import load_config
from lmplatform.pipeline.config import PipelineConfig, config_hash
from lmplatform.pretraining.config import PretrainJobConfig, adapted_to_task
from lmplatform.serving.config import ServeConfig
from lmplatform.tune.config import FinetuneJobConfig

if TYPE_CHECKING:
    from lmplatform.registry.store import Registry


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


def _common(cfg: PipelineConfig) -> list[str]:
    """The overrides every stage's job config gets: the pipeline's storage and tracking."""
    common = [f"output_dir={cfg.output_dir}", f"registry={cfg.registry.written}"]
    if cfg.tracking is not None:
        common.append(f"tracking={json.dumps(cfg.tracking.model_dump(mode='json'))}")
    return common


def resolve(
    cfg: PipelineConfig,
) -> tuple[PretrainJobConfig, list[FinetuneJobConfig], ServeConfig | None]:
    """Every stage's config, validated up front: a typo in the last task fails before pretraining."""
    common = _common(cfg)
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
        from lmplatform.serving.graph import read_serve_config

        serve_cfg = read_serve_config(
            cfg.serve.config, [*cfg.serve.overrides, f"registry={cfg.registry.written}"]
        ).model_copy(update={"tasks": names})
    return pre, tasks, serve_cfg


def resolve_adapts(
    cfg: PipelineConfig, pre: PretrainJobConfig, tasks: list[FinetuneJobConfig]
) -> dict[str, PretrainJobConfig]:
    """task -> its task-adaptive pretraining config, for the tasks that ask for one, checked
    against `pre`'s model now (not after pretraining); `adapt_from` completes it once the
    pretrained version exists."""
    from lmplatform.config import ConfigError
    from lmplatform.pretraining.prepare import model_mismatch

    out = {}
    for ref, job in zip(cfg.tasks, tasks):
        if ref.adapt is None:
            continue
        base = load_config(
            PretrainJobConfig, ref.adapt.config, [*ref.adapt.overrides, *_common(cfg)]
        )
        adapt = adapted_to_task(base, pre.name, job.task.name, job.task.train)
        if diff := model_mismatch(adapt.model.model_dump(), pre.model.model_dump()):
            raise ConfigError(
                f"task {job.task.name}: adapt config {ref.adapt.config} does not describe the "
                f"pretrained model {pre.name}: " + ", ".join(diff)
            )
        out[job.task.name] = adapt
    return out


def adapt_from(adapt: PretrainJobConfig, parent: str) -> PretrainJobConfig:
    """The adaptation of the exact pretrained version `parent`, in a run folder of its own:
    under one folder per name, a run resumes from the newest checkpoint there, so a new parent
    would have continued the old adaptation instead of starting from its own weights."""
    out = storage.join(adapt.output_dir, "adapt", parent.replace("@", "-"))
    return adapt.model_copy(update={"init_from": parent, "output_dir": out})


def run(cfg: PipelineConfig, force: bool = False) -> dict:
    """Run (or resume) the pipeline; returns its state."""

    pre, tasks, serve_cfg = resolve(cfg)
    adapts = resolve_adapts(cfg, pre, tasks)
    state = State(storage.join(cfg.output_dir, cfg.name, "state.json"))
    asked = {f"adapt:{task}" for task in adapts}
    for stale in [k for k in state.data if k.startswith("adapt:") and k not in asked]:
        del state.data[stale]  # a task that no longer asks for it: not in the report
    reg = cfg.registry
    t_all = time.time()
    prepare_stage(pre, state, force)
    parent = pretrain_stage(pre, state, reg, force)
    for job in tasks:
        start = parent
        if (adapt := adapts.get(job.task.name)) is not None:
            adapt = adapt_from(adapt, parent)
            start = pretrain_stage(adapt, state, reg, force, stage=f"adapt:{job.task.name}")
        finetune_stage(job.model_copy(update={"parent": start}), state, reg, force)
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
    from lmplatform.pretraining.prepare import prepare

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


def pretrain_stage(
    pre: PretrainJobConfig, state: State, reg: Registry, force: bool, stage: str = "pretrain"
) -> str:
    """Pretraining (or a task's adaptive pretraining), registered; returns the version the
    tasks after it start from (`name@version`)."""
    h = config_hash(pre)
    s = state.done(stage, h)
    if s and not force and s["version"] in reg.versions("pretrained", pre.name):
        _log(f"{stage}: skipped (same config; pretrained/{pre.name}@{s['version']})")
        return f"{pre.name}@{s['version']}"
    from lmplatform.pretraining.run import export_and_register, run_pretraining

    t0 = time.time()
    prepared, result = run_pretraining(pre)
    name, version, _ = export_and_register(pre, prepared, result)
    meta = reg.metadata("pretrained", name, version)
    state.record(
        stage,
        h,
        name=name,
        version=version,
        metrics={  # what summarizes a run of this family's objective (BERT: MLM and NSP)
            k: meta.get("metrics", {}).get(k) for k in (*pre.objective.metrics, "step")
        },
        run_dir=prepared.run_dir,
        seconds=time.time() - t0,
    )
    _log(f"{stage}: registered pretrained/{name}@{version} in {time.time() - t0:.0f}s")
    return f"{pre.name}@{version}"


def finetune_stage(job: FinetuneJobConfig, state: State, reg: Registry, force: bool) -> None:
    """One task's search, then its best checkpoint published and promoted if it wins."""
    from lmplatform.tune.data import load_task_data
    from lmplatform.tune.promotion import describe_baseline, promote
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
        parent=job.parent,
        metric=res["metric"],
        value=res["value"],
        promoted=res["promoted"],
        best=reg.best(job.task.name),
        trials=len(sr.table),
        run_dir=sr.run_dir,
        seconds=time.time() - t0,
        baseline=res["baseline"],
    )
    verdict = "promoted to best" if res["promoted"] else f"best stays {reg.best(job.task.name)}"
    _log(
        f"{stage}: tasks/{job.task.name}@{res['version']} {res['metric']} {res['value']:.4f} "
        f"({verdict}) in {time.time() - t0:.0f}s; {describe_baseline(res['baseline'])}"
    )


def deploy(cfg: ServeConfig, state: State) -> None:
    from ray import serve

    from lmplatform.serving.graph import run_app

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
