"""Adapter versions: a task version that holds only its LoRA adapters and its head, and names the
pretrained version they sit on.

    <root>/tasks/<task>/<version>/
        adapter.safetensors   the adapters (our module names) and the head's tensors
                              (`TaskModel.in_head`: ELMo's scalar mix, ELECTRA's pooler)
        tokenizer.json …      as any task version
        metadata.json         + "adapter": {kind, rank, alpha, dropout, targets, modules,
                                            base: "name@vNNNN", base_digest}

A few MB per task instead of a whole model. `base_digest` is the sha256 of the base version's
recorded checksums (its metadata.json `files`): loading refuses a base whose files are not the
ones the adapters were trained on. The base comes through `Registry.local_path`, so on an object
store it is downloaded once per node and shared by every task on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lmplatform.models.lora import LoraLinear, LoraSpec, add_lora, merge_lora
from lmplatform.models.tasks import TaskModel
from lmplatform.registry.store import Registry, RegistryError, check_ref

ADAPTER_FILE = "adapter.safetensors"


def adapter_of(meta: dict) -> dict | None:
    """A version's adapter description (None: a whole model)."""
    a = meta.get("adapter")
    return a if isinstance(a, dict) else None


def base_digest(reg: Registry, name: str, version: str) -> str:
    """What identifies a base version's content: the sha256 of its recorded file checksums."""
    files = reg.metadata("pretrained", name, version).get("files") or {}
    if not files:
        raise RegistryError(
            f"pretrained/{name}@{version} records no checksums: adapters cannot name it as base"
        )
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def spec_of(adapter: dict) -> LoraSpec:
    return LoraSpec(
        int(adapter["rank"]),
        float(adapter["alpha"]),
        float(adapter.get("dropout", 0.0)),
        tuple(adapter["targets"]),
    )


def _stored(model: TaskModel, key: str) -> bool:
    """What an adapter version stores: the adapters and the head (`TaskModel.in_head`)."""
    return model.in_head(key) or key.endswith(("lora_a", "lora_b"))


def adapter_tensors(model: TaskModel) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().contiguous().clone()
        for k, v in model.state_dict().items()
        if _stored(model, k)
    }


def save_adapter(
    model: TaskModel,
    out: Path,
    spec: LoraSpec,
    base: tuple[Registry, str],
    tokenizer: Path,
    extra: dict,
) -> Path:
    """An adapter version's folder for `Registry.publish`: the adapters of `model` (unmerged),
    its head, tokenizer and metadata naming the base ('name@version' in the registry)."""
    from lmplatform.models.io import FORMAT_VERSION, _describe

    reg, ref = base
    name, version = check_ref(ref, "adapter base")
    modules = [n for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    if not modules:
        raise ValueError("the model has no LoRA adapters to save")
    out.mkdir(parents=True)
    save_file(adapter_tensors(model), str(out / ADAPTER_FILE), metadata={"format": "pt"})
    (out / "tokenizer.json").write_bytes(Path(tokenizer).read_bytes())
    adapter = {
        "kind": "lora",
        **{k: getattr(spec, k) for k in ("rank", "alpha", "dropout")},
        "targets": list(spec.targets),
        "modules": modules,
        "base": f"{name}@{version}",
        "base_digest": base_digest(reg, name, version),
    }
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model.cfg.model_dump(),
        **_describe(model),
        **extra,
        "adapter": adapter,
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2))
    return out


def base_path(reg: Registry, adapter: dict, ref: str) -> Path:
    """The base's local folder (downloaded once per node from an object store), after checking
    it is the content the adapters were trained on."""
    name, version = check_ref(adapter["base"], "adapter base")
    if not version or version in ("latest", "best"):
        raise RegistryError(f"{ref}: its base {adapter['base']!r} names no exact version")
    try:
        digest = base_digest(reg, name, version)
    except (FileNotFoundError, RegistryError) as e:
        raise RegistryError(
            f"{ref}: its base pretrained/{name}@{version} cannot be read in {reg.uri} ({e})"
        ) from None
    if digest != adapter.get("base_digest"):
        raise RegistryError(
            f"{ref}: its base pretrained/{name}@{version} in {reg.uri} is not the one the "
            f"adapters were trained on (checksums {digest[:12]}…, recorded "
            f"{str(adapter.get('base_digest'))[:12]}…)"
        )
    return reg.local_path("pretrained", name, version)


def load_adapter_model(reg: Registry, folder: str | os.PathLike, merge: bool = True) -> TaskModel:
    """An adapter version as a task model: the base's encoder, its adapters and head (`merge`:
    adapters folded into the weights, the family's plain model)."""
    from lmplatform.models.io import read_config, task_model_from_pretrained

    meta = read_config(folder)
    adapter = adapter_of(meta)
    ref = f"tasks/{meta.get('task_name')} ({folder})"
    if adapter is None:
        raise ValueError(f"{ref} is not an adapter version")
    h = meta["head"]
    model = task_model_from_pretrained(
        base_path(reg, adapter, ref), h["type"], h["num_labels"], layout=h.get("layout")
    )
    add_lora(model.encoder, spec_of(adapter))
    load_adapter_tensors(model, load_file(str(Path(folder) / ADAPTER_FILE)), ref)
    if merge:
        merge_lora(model)
    return model.eval()


def load_adapter_tensors(model: nn.Module, state: dict[str, torch.Tensor], ref: str) -> None:
    """An adapter file into a model with the same adapters: exactly its adapters and head."""
    want = {k for k in model.state_dict() if _stored(model, k)}
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        raise RegistryError(
            f"{ref}: {ADAPTER_FILE} does not fit its base with these adapters "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    model.load_state_dict(state, strict=False)


def load_task_model(reg: Registry, folder: str | os.PathLike) -> TaskModel:
    """Any task version's folder as a model: a whole one as saved, an adapter version on its
    base with the adapters merged."""
    from lmplatform.models.io import from_pretrained, read_config

    if adapter_of(read_config(folder)) is not None:
        return load_adapter_model(reg, folder)
    return from_pretrained(folder)


_KEEP = ("labels", "classes", "entity_types", "max_seq_len", "task_name", "decoding")


def export_adapter(reg: Registry, folder: str | os.PathLike, out: str | os.PathLike, merge: bool):
    """An adapter version for transformers: the peft layout in `out` (adapter_config.json,
    adapter_model.safetensors, tokenizer) over a transformers folder `out/base` of the base
    with the task's head; or, `merge`, one plain transformers folder with the adapters folded
    in. Returns the folder `AutoModel…from_pretrained` takes (`out/base` or `out`)."""
    from lmplatform.models import hf
    from lmplatform.models.io import _AtomicDir, read_config, save_pretrained
    from lmplatform.models.lora_hf import save_peft

    meta = read_config(folder)
    extra = {k: meta[k] for k in _KEEP if meta.get(k) is not None}
    tokenizer = Path(folder) / "tokenizer.json"
    model = load_adapter_model(reg, folder, merge=merge)
    if merge:
        why = hf.not_expressible(model)
        if why and not hf.uses_mean_pool(model):
            raise ValueError(f"{folder}: cannot export to transformers: {why}")
        return save_pretrained(model, out, tokenizer=tokenizer, extra=extra)
    with _AtomicDir(out) as tmp:
        plain = save_peft(model, tmp, Path(out) / "base")
        base = save_pretrained(plain, tmp / "base", tokenizer=tokenizer, extra=extra)
        for f in base.iterdir():  # the tokenizer beside the adapter too (AutoTokenizer on it)
            if f.name.startswith(("tokenizer", "special_tokens")):
                (tmp / f.name).write_bytes(f.read_bytes())
    return Path(out) / "base"
