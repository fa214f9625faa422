"""LoRA adapters (Hu et al., 2021) for every family's layer stacks: a frozen Linear W plus a
trained low-rank update, y = W x + (alpha / rank) * B A dropout(x), with A (rank x in) drawn
as PEFT draws it (Kaiming-uniform, a = sqrt 5) and B (out x rank) zero, so an adapted model
starts as its base.

Targets are groups of the Linear layers inside the layers of a `LayerStack` (never a stack's
own direct Linear children: BERT's pooler, ELECTRA's embedding projection):
- `attention`: the projections of an attention module (BERT/ELECTRA/GPT `qkv` and `out`, the
  encoder-decoder's `q_proj` `k_proj` `v_proj` `out_proj`, self- and cross-attention);
- `ffn`: every other Linear of a layer (the feed-forward `ffn_in`/`ffn_out`, `fc`/`proj`,
  `fc1`/`fc2`).

`merge_lora` folds each update into its weight and puts the plain Linear back: the model is
then its family's own again (exported, served and loaded as any other).
This module imports no Ray or DeepSpeed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmplatform.models.layers import LayerStack, SelfAttention

TARGETS = ("attention", "ffn")


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self):
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"invalid LoRA settings {self}")
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets must be among {TARGETS}: got {list(self.targets)}")


class LoraLinear(nn.Module):
    """A frozen Linear with a trained low-rank update beside it."""

    def __init__(self, base: nn.Linear, spec: LoraSpec):
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.lora_a = nn.Parameter(
            torch.empty(spec.rank, base.in_features, device=base.weight.device)
        )
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, spec.rank, device=base.weight.device)
        )
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.alpha = spec.alpha
        self.scaling = spec.alpha / spec.rank
        self.dropout = spec.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.dropout(x, self.dropout, self.training) if self.dropout else x
        update = F.linear(F.linear(update, self.lora_a), self.lora_b)
        return self.base(x) + update * self.scaling

    def merged(self) -> nn.Linear:
        """The base Linear with the update folded into its weight."""
        with torch.no_grad():
            delta = (self.lora_b.float() @ self.lora_a.float()) * self.scaling
            self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


def _attention(module: nn.Module) -> bool:
    from lmplatform.models.transformer.model import Attention

    return isinstance(module, SelfAttention | Attention)


def lora_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Qualified names of the Linear layers `targets` selects (see the module's docstring)."""
    wanted = set(targets)
    stacks = [name for name, m in model.named_modules() if isinstance(m, LayerStack)]
    modules = dict(model.named_modules())
    found = []
    for name, m in modules.items():
        if not isinstance(m, nn.Linear) or "." not in name:
            continue
        parent_name = name.rsplit(".", 1)[0]
        inside = [s for s in stacks if s == "" or name.startswith(s + ".")]
        if not inside or parent_name in inside:  # outside a stack, or a stack's own Linear
            continue
        group = "attention" if _attention(modules[parent_name]) else "ffn"
        if group in wanted:
            found.append(name)
    return found


def add_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Wraps the targeted Linear layers of `model` in LoraLinear and freezes every other
    parameter of them; returns the wrapped names. (The caller decides what else trains: a
    task's head.)"""
    names = lora_targets(model, spec.targets)
    if not names:
        raise ValueError(f"no Linear layer of {type(model).__name__} matches {list(spec.targets)}")
    for name in names:
        parent_name, attr = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoraLinear(getattr(parent, attr), spec))
    return names


def merge_lora(model: nn.Module) -> int:
    """Folds every LoraLinear of `model` into its base and puts the plain Linear back; returns
    how many there were."""
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoraLinear)]
    for name in wrapped:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, getattr(parent, attr).merged())
    return len(wrapped)


class RoutedLora(nn.Module):
    """A frozen Linear serving the adapters of several tasks in one forward (the S-LoRA /
    Punica idea): every row of the batch goes through the shared weight, then adds its own
    task's low-rank update. `route` is set around a forward by whoever batched the rows:
    (row -> slot (B,), A of every slot (K, r, in), B of every slot with its scaling folded in
    (K, out, r)); a slot of zeros for rows whose task does not adapt this layer, and ranks
    padded with zeros to the largest (exact: they add nothing). None: the base alone."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.route: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.route is None:
            return y
        slots, a, b = self.route
        if a.shape[0] == 1:  # one slot: every row's update is the same matrices
            return y + F.linear(F.linear(x, a[0]), b[0]).to(y.dtype)
        a, b = a[slots], b[slots]  # (B, r, in), (B, out, r): each row's own
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, in)
        update = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2))
        return y + update.reshape(y.shape).to(y.dtype)


def routed(model: nn.Module, names: Iterable[str]) -> dict[str, RoutedLora]:
    """Every RoutedLora of `model`, after wrapping the Linear layers `names` that are not yet
    (a name that is not a Linear of the model is refused)."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, attr, None)
        if isinstance(layer, nn.Linear):
            setattr(parent, attr, RoutedLora(layer))
        elif not isinstance(layer, RoutedLora):
            raise ValueError(f"{name}: not a Linear layer of {type(model).__name__}")
    return {n: m for n, m in model.named_modules() if isinstance(m, RoutedLora)}
