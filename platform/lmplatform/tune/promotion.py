"""After a search: the best checkpoint re-scored on the whole dev set, published to the
registry, and promoted to the task's `best` only if it beats the current one."""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from lmplatform import storage
from lmplatform.models.lora import LoraLinear, merge_lora
from lmplatform.models.tasks import TaskModel
from lmplatform.train.worker_parts import consolidated_state_dict
from lmplatform.tune.config import FinetuneJobConfig, TrialParams
from lmplatform.tune.data import TaskData
from lmplatform.tune.search import SearchResult
from lmplatform.tune.trial import (
    SELECTION,
    build_model,
    evaluate,
    load_trial_state,
    lora_spec,
    task_encoder,
)


def best_checkpoint(results, metric: str = SELECTION, output_dir: str = "."):
    """The checkpoint with the highest metric over every trial and evaluation (by default the
    task metric with ties broken by dev loss: `SELECTION`)."""
    best = results.get_best_result(metric=metric, mode="max", scope="all")
    ckpt = best.get_best_checkpoint(metric=metric, mode="max") if best.best_checkpoints else None
    if ckpt is None:
        df = best.metrics_dataframe
        if "checkpoint_path" in df:  # multi-worker trials: Ray Train's checkpoint, path in metrics
            import ray.train

            row = df.loc[df[metric].idxmax()]
            # Ray Train's path inside the run storage, on that storage's filesystem
            fs = storage.arrow_filesystem(storage.join(output_dir, "train"))[0]
            ckpt = ray.train.Checkpoint(row["checkpoint_path"], filesystem=fs)
    if ckpt is None:
        raise RuntimeError(
            f"search produced no checkpoint (best trial: {best.path}, error: {best.error})"
        )
    return best, ckpt


def best_model(sr: SearchResult) -> tuple[TaskModel, dict, dict]:
    """The search's best checkpoint as a model, its training state, and its whole-dev metrics."""
    data = sr.data
    _, ckpt = best_checkpoint(sr.results, SELECTION, sr.job.output_dir)
    with ckpt.as_directory() as d:
        state = load_trial_state(d)
        # a DeepSpeed trial's weights are in its ZeRO shards: their fp32 copy, merged
        weights = state["model"] if "model" in state else consolidated_state_dict(d)
    model = build_model(data, TrialParams.model_validate(state["hp"]))
    model.load_state_dict(weights)
    if not publishes_adapters(data, model):
        merge_lora(model)  # adapters folded into their weights: the family's plain model again
    return model, state, evaluate(model, data, data.dev_rows, task_encoder(data), detail=True)


def publishes_adapters(data: TaskData, model: nn.Module) -> bool:
    """Whether the winner is published as an adapter version (adapters and head only, naming
    the pretrained version they sit on): a LoRA task model whose parent is a registry version.
    From random weights, or the encoder-decoder warm-started from a pretrained encoder, there is
    no registry version to sit on: those are published whole, adapters merged."""
    return (
        isinstance(model, TaskModel)
        and any(isinstance(m, LoraLinear) for m in model.modules())
        and not data.parent_ref.startswith("random:")
    )


def promote(sr: SearchResult, force: bool = False) -> dict:
    """Re-evaluate the best checkpoint on the whole dev set, publish it, promote if it wins."""
    from lmplatform import tracking

    job = sr.job
    metric = job.task.metric
    model, state, dev = best_model(sr)
    value = dev[metric]
    with tempfile.TemporaryDirectory() as td:
        out = _export(model, job, sr.data, Path(td), TrialParams.model_validate(state["hp"]))
        metadata = _task_metadata(sr, state, dev)
        run = tracking.find_run(
            job.tracking, job.output_dir, job.name, {"trial_name": str(state.get("trial"))}
        )
        if run is not None:
            metadata["tracking"] = run
        reg = job.registry
        version = reg.publish("tasks", job.task.name, out, metadata)
    tracking.tag_run(run, f"tasks/{job.task.name}@{version}", reg.uri)
    promoted, previous = reg.promote(job.task.name, version, value, force=force)
    return {
        "task": job.task.name,
        "version": version,
        "metric": metric,
        "value": value,
        "promoted": promoted,
        "previous": previous,
        "hyperparameters": state["hp"],
        "baseline": baseline_verdict(sr, value),
    }


def baseline_verdict(sr: SearchResult, value: float) -> dict | None:
    """The winner against the search's baseline: both values, the gain in points and whether it
    beats it (None: the search had no baseline)."""
    b = sr.baseline
    if b is None:
        return None
    base = b.metrics[sr.job.task.metric]
    return {"model": b.model, "value": base, "gain": 100 * (value - base), "beats": value > base}


def describe_baseline(verdict: dict | None) -> str:
    """One line for the promotion's output: plainly, when the model loses to the baseline."""
    if verdict is None:
        return "no baseline"
    head = f"baseline ({verdict['model']}) {verdict['value']:.4f}, {verdict['gain']:+.2f} points"
    if verdict["beats"]:
        return f"{head}: beats it"
    if verdict["gain"] == 0:
        return f"{head}: only matches it — the baseline does as well"
    return f"{head}: does NOT beat it — a user is better served by the baseline"


def _export(
    model: nn.Module, job: FinetuneJobConfig, data: TaskData, folder: Path, hp: TrialParams
) -> Path:
    """The model as a registry-ready folder under `folder`: weights (or adapters and head),
    tokenizer, what serving needs to decode its outputs, and the resolved job config."""
    from lmplatform.config import save_resolved
    from lmplatform.models.io import save_pretrained
    from lmplatform.registry.adapters import save_adapter

    out = folder / "export"
    tok_file = folder / "tokenizer.json"
    tok_file.write_text(data.tokenizer_json)
    extra = {
        "labels": data.label_names,
        "classes": data.classes,
        "max_seq_len": job.task.max_seq_len,
        "task_name": job.task.name,
        **({"decoding": job.task.decoding.model_dump()} if job.task.decoding is not None else {}),
    }
    if publishes_adapters(data, model):
        spec = lora_spec(data, hp)
        save_adapter(model, out, spec, (data.registry, data.parent_ref), tok_file, extra)
    else:
        save_pretrained(model, out, tokenizer=tok_file, extra=extra)
    save_resolved(job, out)
    return out


def _task_metadata(sr: SearchResult, state: dict, dev: dict) -> dict:
    """The registry metadata of the published model: its whole-dev scores, hyperparameters,
    lineage (parent, tokenizer, data) and the search and trial it came from."""
    job, data = sr.job, sr.data
    metric = job.task.metric
    return {
        "kind": "task",
        "task": job.task.name,
        "type": job.task.type,
        "labels": data.label_names,
        "classes": data.classes,
        "metric": metric,
        "value": dev[metric],
        "per_class": dev["per_class"],
        "dev": {k: v for k, v in dev.items() if k != "per_class"},
        "hyperparameters": state["hp"],
        "parent": data.parent_ref,
        "baseline": sr.baseline.to_json() if sr.baseline is not None else None,
        "tokenizer_hash": data.tokenizer_hash,
        "data_fingerprint": data.fingerprints,
        "search": {
            "name": job.name,
            "scheduler": job.search.scheduler,
            "trials": len(sr.table),
            "experiment": sr.experiment_path,
            "trial": state.get("trial"),
            "step": state["step"],
        },
    }
