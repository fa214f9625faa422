"""Many tasks' LoRA adapters on one base in one replica (`adapter_groups` in the serve config).

The base's encoder is loaded once per replica (`SharedBase`); each task's promoted adapter
version adds its A and B matrices (a few MB) and its head. A forward takes the rows of every
task in the batch through the shared weights together, each row adding its own task's update
in the adapted layers (`RoutedLora`), then each task's head reads its rows. Promoting a task
loads only that task's adapters and head: the base stays, the other tasks' adapters too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmplatform.models.io import from_pretrained, read_config
from lmplatform.models.layers import Encoded
from lmplatform.models.lora import RoutedLora, routed
from lmplatform.models.tasks import TaskModel, encoder_of
from lmplatform.registry.adapters import ADAPTER_FILE, adapter_of, base_path
from lmplatform.registry.store import Registry
from lmplatform.serving.predictors import SharedEncoder, TaskPredictor, device, token_budget
from lmplatform.tokenization import special_tokens


class SharedBase:
    """A pretrained version's encoder on this replica's device, loaded once and shared by every
    adapter of the group (and by the groups that replace it on a swap)."""

    def __init__(self, reg: Registry, adapter: dict, ref: str):
        source = from_pretrained(base_path(reg, adapter, ref))
        self.encoder = source.encoder if isinstance(source, TaskModel) else encoder_of(source)
        self.encoder.to(device()).eval().requires_grad_(False)
        self.ref, self.digest = adapter["base"], adapter["base_digest"]
        self.layers: dict[str, RoutedLora] = {}
        self.lock = threading.Lock()  # one forward at a time: routes are set per forward


@dataclass
class Adapter:
    """One task version's adapters on the group's base: its predictor (parsing, head,
    decoding), its updates by encoder layer and their scaling."""

    predictor: TaskPredictor
    updates: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scaling: float


def load_adapter(reg: Registry, base: SharedBase, task: str, version: str, info) -> Adapter:
    """Task `task`'s adapter version `version` on `base` (refused when it cannot join: a whole
    model, another base, encoder weights of its own); checked before the base is touched."""
    folder = reg.local_path("tasks", task, version)
    meta = read_config(folder)
    _check_joins(meta, base, f"{task}@{version}")
    state = load_file(str(Path(folder) / ADAPTER_FILE), device=str(device()))
    a = adapter_of(meta)
    updates = {
        m.removeprefix("encoder."): (state.pop(f"{m}.lora_a"), state.pop(f"{m}.lora_b"))
        for m in a["modules"]
    }
    own = sorted(k for k in state if k.startswith("encoder."))
    if own:  # the base's weights are every task's: a task's own pooler cannot be shared
        raise ValueError(
            f"{task}@{version} trains encoder weights of its own ({', '.join(own[:2])}: "
            "ELECTRA's sequence head): serve it on its own (not in adapter_groups)"
        )
    h = meta["head"]
    model = TaskModel(base.encoder, h["type"], h["num_labels"], layout=h.get("layout"))
    head = {k for k in model.state_dict() if not k.startswith("encoder.")}
    if set(state) != head:
        raise ValueError(
            f"{task}@{version}: {ADAPTER_FILE} holds {sorted(state)[:3]}…, not its head"
        )
    model.load_state_dict(state, strict=False)
    with base.lock:
        base.layers = routed(base.encoder, updates)
    return Adapter(TaskPredictor(folder, info, model), updates, a["alpha"] / a["rank"])


def _check_joins(meta: dict, base: SharedBase, ref: str) -> None:
    a = adapter_of(meta)
    if a is None:
        raise ValueError(
            f"{ref} is a whole model, not an adapter version: serve it on its own "
            "(not in adapter_groups)"
        )
    if a.get("base") != base.ref:
        raise ValueError(
            f"{ref} has adapters on pretrained/{a.get('base')}, the group's base is "
            f"pretrained/{base.ref}: every task of an adapter group needs the same base"
        )
    if a.get("base_digest") != base.digest:
        raise ValueError(
            f"{ref} was trained on pretrained/{base.ref} with other files than the group's "
            "copy of it (another base_digest): every task needs the same base content"
        )


class AdapterGroup(SharedEncoder):
    """Tasks whose models are adapters on one base: one forward through the base per batch of
    rows of any of them (see the module's docstring)."""

    def __init__(self, base: SharedBase, adapters: dict[str, Adapter]):
        if not adapters:
            raise ValueError("an adapter group needs at least one task")
        self.base, self.adapters = base, adapters
        self.predictors = {t: a.predictor for t, a in adapters.items()}
        self.encoder = base.encoder
        self.pad_id = special_tokens(next(iter(self.predictors.values())).tokenizer).pad
        self.calls = 0  # base forwards
        self.largest_forward = 0  # padded tokens of the largest one
        self.max_tokens = token_budget(device())
        self._lock = base.lock
        self.slot = {t: k for k, t in enumerate(adapters)}  # the last slot: no update
        used = {name for a in adapters.values() for name in a.updates}
        self.stacks = {name: _stack(adapters, name) for name in used}

    def _encode(self, batch: dict[str, torch.Tensor], rows: dict[str, torch.Tensor]) -> Encoded:
        """The base over the batch, each task's rows adding that task's updates."""
        if len(rows) == 1:  # one task: its own matrices, no gathering
            (task,) = rows
            k = self.slot[task]
            route = lambda a, b: (None, a[k : k + 1], b[k : k + 1])  # noqa: E731
        else:
            slots = torch.full((batch["input_ids"].shape[0],), len(self.slot), device=device())
            for task, r in rows.items():
                slots[r] = self.slot[task]
            route = lambda a, b: (slots, a, b)  # noqa: E731
        for name, layer in self.base.layers.items():
            layer.route = route(*self.stacks[name]) if name in self.stacks else None
        try:
            return self.encoder.encode(**batch)
        finally:
            for layer in self.base.layers.values():
                layer.route = None


def _stack(adapters: dict[str, Adapter], layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every task's A and scaled B for one layer, a slot each (zeros where a task leaves the
    layer alone, and one more for no task), ranks padded with zeros to the largest."""
    found = [a.updates[layer] for a in adapters.values() if layer in a.updates]
    rank = max(a.shape[0] for a, _ in found)
    (a0, b0) = found[0]
    a_s = a0.new_zeros(len(adapters) + 1, rank, a0.shape[1])
    b_s = b0.new_zeros(len(adapters) + 1, b0.shape[0], rank)
    for k, ad in enumerate(adapters.values()):
        if layer in ad.updates:
            a, b = ad.updates[layer]
            a_s[k, : a.shape[0]] = a
            b_s[k, :, : b.shape[1]] = b * ad.scaling
    return a_s, b_s
