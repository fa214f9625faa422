"""A LoRA task model in the `peft` layout: `adapter_config.json` and `adapter_model.safetensors`
beside a transformers folder of the base (with the task's head), so that

    base = AutoModelForSequenceClassification.from_pretrained(f"{out}/base")
    model = PeftModel.from_pretrained(base, out)

computes what our model computes. The mapping is read off the family's transformers layout
(`hf.hf_state`, views of our weights) rather than written per family:

- an adapted Linear whose weight transformers stores whole gets the same A and B under that
  module's name; stored transposed (GPT-2's Conv1D) it is the same, with `fan_in_fan_out`;
- one whose weight transformers stores as row slices (BERT's fused qkv -> query, key, value)
  gives each slice's module the same A and its rows of B: (B A)[rows] = B[rows] A, exactly;
- the task head travels as `modules_to_save` (its tensors under transformers' names).
`peft` itself is never imported here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmplatform.models import hf
from lmplatform.models.families import family
from lmplatform.models.lora import LoraLinear
from lmplatform.models.tasks import TaskModel

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_TASK_TYPES = {"pooled": "SEQ_CLS", "token": "TOKEN_CLS"}


def _stripped(model: TaskModel) -> tuple[TaskModel, dict[str, LoraLinear]]:
    """A copy of `model` with each LoraLinear replaced by its (unmerged) base Linear, and the
    adapters by our module name."""
    plain = copy.deepcopy(model)
    adapters = {}
    for name, m in list(plain.named_modules()):
        if isinstance(m, LoraLinear):
            parent, _, attr = name.rpartition(".")
            setattr(plain.get_submodule(parent), attr, m.base)
            adapters[name] = m
    return plain, adapters


def _slices(weight: torch.Tensor, views: dict[str, torch.Tensor]) -> list[tuple[str, slice, bool]]:
    """(transformers module, our rows it holds, transposed) for each transformers weight that
    is a view of `weight`."""
    out = []
    ptr, rows, cols = weight.untyped_storage().data_ptr(), *weight.shape
    for name, v in views.items():
        if not name.endswith(".weight") or v.untyped_storage().data_ptr() != ptr:
            continue
        module = name.removesuffix(".weight")
        if tuple(v.shape) == (cols, rows) and v.stride() == (1, cols):
            out.append((module, slice(0, rows), True))
        elif v.dim() == 2 and v.shape[1] == cols and v.stride() == weight.stride():
            start = (v.storage_offset() - weight.storage_offset()) // cols
            out.append((module, slice(start, start + v.shape[0]), False))
        else:
            raise ValueError(f"{name}: a view of an adapted weight that LoRA cannot follow")
    return out


def peft_state(model: TaskModel) -> tuple[dict[str, torch.Tensor], dict, TaskModel]:
    """(adapter_model.safetensors tensors, the adapter_config.json fields they imply, the model
    without its adapters: the base to save as a transformers folder)."""
    why = hf.not_expressible(model)
    if why or family(model.cfg).hf is None:
        raise ValueError(f"no transformers layout for this model: {why}")
    plain, adapters = _stripped(model)
    views = hf.hf_state(plain)
    tensors, targets, transposed = {}, [], set()
    for name, lora in adapters.items():
        found = _slices(plain.get_submodule(name).weight, views)
        if not found:
            raise ValueError(f"{name}: transformers stores no weight of it")
        for module, rows, t in found:
            tensors[f"{_PREFIX}{module}.lora_A.weight"] = lora.lora_a.detach().clone()
            tensors[f"{_PREFIX}{module}.lora_B.weight"] = lora.lora_b[rows].detach().clone()
            targets.append(module)
            transposed.add(t)
    if len(transposed) > 1:
        raise ValueError("adapted weights both transposed and not: one fan_in_fan_out cannot say")
    saved = sorted({k.split(".")[0] for k in _head_names(plain, views)})
    # every weight of those modules (ELECTRA's classifier.dense is a base weight: frozen)
    head = [k for k in views if k.split(".")[0] in saved]
    tensors.update({f"{_PREFIX}{k}": views[k].detach().contiguous().clone() for k in head})
    spec = next(iter(adapters.values()))
    fields = {
        "r": spec.lora_a.shape[0],
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": sorted(targets),
        "fan_in_fan_out": transposed == {True},
        "modules_to_save": saved,
        "task_type": _TASK_TYPES.get(model.layout),
    }
    return tensors, fields, plain


def _head_names(plain: TaskModel, views: dict[str, torch.Tensor]) -> list[str]:
    """transformers names of the weights outside the encoder (the head), checked to sit in
    modules of their own (what `modules_to_save` can carry)."""
    encoder = {p.untyped_storage().data_ptr() for p in plain.encoder.state_dict().values()}
    head = [k for k, v in views.items() if v.untyped_storage().data_ptr() not in encoder]
    prefix = family(plain.cfg).hf.prefix
    inside = [k for k in head if prefix and k.startswith(prefix)]
    if inside:
        raise ValueError(f"head weights {inside[:2]} sit inside the base model's modules")
    return head


def save_peft(model: TaskModel, out: Path, base: Path) -> TaskModel:
    """`model`'s adapters and head into `out` in the peft layout, naming `base` as its base
    model; returns the model without its adapters, for the caller to save there
    (`save_pretrained`)."""
    tensors, fields, plain = peft_state(model)
    save_file(tensors, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        **fields,
        "bias": "none",
        "inference_mode": True,
        "base_model_name_or_path": str(base.resolve()),
    }
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2))
    return plain
