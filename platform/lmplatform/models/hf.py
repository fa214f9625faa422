"""The Hugging Face `transformers` layout of our models: the mechanics every family shares.

Our BERT, GPT and encoder-decoder modules compute exactly what `BertModel` / `GPT2Model` /
`MarianMTModel` compute, so a model is stored under transformers' weight names and config keys,
and the mapping runs both ways. The names and keys are each family's own (`Family.hf`, an
`HFAdapter` in models/bert/hf.py, …); here is what surrounds them:

- `hf_state(model)` maps every transformers weight name to a *view* of our parameter (GPT-2's
  Conv1D weights are the transpose of a Linear's; BERT's query/key/value are slices of our fused
  projection), a task head's included. Saving copies the views out; loading copies tensors
  into them.
- `hf_config` / `config_from_hf` translate the architecture both ways; task models get their
  labels and head class here.
- `tokenizer_files` completes a `tokenizer.json` with what `AutoTokenizer` needs (every special
  token, `model_max_length`, `model_input_names`).

What transformers has no class for is marked rather than silently approximated: a sequence head
on frozen mean-pooled features ships the code it needs (`trust_remote_code=True` loads it; without
it transformers refuses), and the biLM gets a model type that transformers does not know.
`transformers` itself is never imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lmplatform.models.families import family, hf_family
from lmplatform.models.tasks import TaskModel

MEANPOOL_CODE = "modeling_lmplatform.py"  # shipped with mean-pool heads (see hf_modeling.py)


def not_expressible(model: nn.Module) -> str | None:
    """Why transformers cannot load this model with one of its own classes (None: it can)."""
    fam = family(model.cfg)
    if fam.hf is None:
        return fam.why_not["hf"]
    why = fam.hf.not_expressible(model)
    if why:
        return why
    if isinstance(model, TaskModel) and model.layout not in ("pooled", "token"):
        return (
            f"its {model.layout!r} head (task type {model.kind}) has no transformers class: "
            "load it with lmplatform.models.io.from_pretrained"
        )
    if uses_mean_pool(model):
        return (
            "its head classifies mean-pooled frozen features, which no transformers class "
            f"does: the folder ships that head as custom code ({MEANPOOL_CODE}); load it with "
            "trust_remote_code=True"
        )
    return None


def uses_mean_pool(model: nn.Module) -> bool:
    return isinstance(model, TaskModel) and model.frozen and model.layout == "pooled"


# --------------------------------------------------------------------------- weights


def hf_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """transformers weight name -> a view of our parameter, for a model (any kind) of a family
    with a transformers layout."""
    adapter = family(model.cfg).hf
    if isinstance(model, TaskModel):
        if adapter is None or adapter.task_state is None:
            raise ValueError(f"{type(model).__name__} has no transformers layout")
        # a head's own extra weights (the predicate head's distance biases) keep our names
        extra = {f"classifier.{n}": p for n, p in model.head.named_parameters() if "." in n}
        return {**adapter.task_state(model), **extra}
    if adapter is None or not isinstance(model, family(model.cfg).pretraining):
        raise ValueError(f"{type(model).__name__} has no transformers layout")
    return adapter.state(model)


def state_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in hf_state(model).items()}


def load_hf_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> list[str]:
    """Copy a transformers state dict into our model. Checkpoints saved without the family's
    prefix (`bert.`, `transformer.`: a bare BertModel / GPT2Model) are accepted. With `strict`,
    every one of our weights must be present; otherwise the missing ones keep their
    initialisation and are returned (a BertForMaskedLM checkpoint has no NSP head, say)."""
    adapter = family(model.cfg).hf
    targets = hf_state(model)
    p = adapter.prefix
    if p and any(t.startswith(p) for t in targets) and not any(k.startswith(p) for k in state):
        state = {p + k: v for k, v in state.items()}
    state = {
        k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        ): v
        for k, v in state.items()
    }
    missing = [k for k in targets if k not in state]
    if missing and strict:
        raise ValueError(
            f"{source}: weights missing: {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    unexpected = [k for k in state if k not in targets and not k.endswith(adapter.ignored)]
    if unexpected and strict:
        raise ValueError(f"{source}: unexpected weights: {', '.join(unexpected[:5])}")
    with torch.no_grad():
        if isinstance(model, TaskModel) and adapter.fill_unstored is not None:
            adapter.fill_unstored(model, targets)
        for name, view in targets.items():
            if name in state:
                t = state[name]
                if tuple(t.shape) != tuple(view.shape):
                    raise ValueError(
                        f"{source}: {name} has shape {tuple(t.shape)}, the model expects "
                        f"{tuple(view.shape)}"
                    )
                view.copy_(t.to(view.dtype))
    return missing


# --------------------------------------------------------------------------- configs


def hf_config(model: nn.Module, labels: list[str] | None, specials: dict[str, int | None]) -> dict:
    """config.json for a model of any kind: the family's transformers config (architectures,
    ids), a task model's labels and head class, or a model type transformers does not know
    for a family it has no class for."""
    fam = family(model.cfg)
    if fam.hf is None:
        enc = model.encoder if isinstance(model, TaskModel) else fam.encoder_of(model)
        arch = type(enc).__name__
        return {
            "model_type": f"lmplatform_{arch.lower()}",
            "architectures": [arch],
            "_note": f"{fam.why_not['hf']}: load it with lmplatform.models.io.from_pretrained",
        }
    if not isinstance(model, TaskModel):
        return fam.hf.config(model, specials)
    hf = fam.hf.encoder_config(model.cfg, specials)
    return _task_config(hf, model, labels, fam.hf.task_arch)


def _task_config(hf: dict, model: TaskModel, labels: list[str] | None, arch: str) -> dict:
    """The encoder's config completed with the task's labels and the class of its head."""
    names = labels or [f"LABEL_{i}" for i in range(model.num_labels)]
    hf["id2label"] = {str(i): n for i, n in enumerate(names)}
    hf["label2id"] = {n: i for i, n in enumerate(names)}
    hf["classifier_dropout"] = model.drop.p
    if uses_mean_pool(model):
        cls = f"MeanPool{arch}ForSequenceClassification"
        hf["model_type"] = f"lmplatform_meanpool_{hf['model_type']}"
        hf["architectures"] = [cls]
        module = MEANPOOL_CODE.removesuffix(".py")
        hf["auto_map"] = {
            "AutoConfig": f"{module}.MeanPool{arch}Config",
            "AutoModelForSequenceClassification": f"{module}.{cls}",
        }
        return hf
    if model.layout not in ("pooled", "token"):
        # weights keep transformers' encoder names (we load them), but no transformers class
        # computes this head: a model type it does not know makes it refuse, not misread
        hf["model_type"] = f"lmplatform_{model.layout}_{hf['model_type']}"
        hf["architectures"] = [f"{arch}With{model.layout.title()}Head"]
        hf["_note"] = "no transformers class: load it with lmplatform.models.io.from_pretrained"
        return hf
    head = "ForTokenClassification" if model.layout == "token" else "ForSequenceClassification"
    hf["architectures"] = [arch + head]
    return hf


def config_from_hf(hf: dict, source: str):
    """Our config for a transformers config.json of a family that imports its checkpoints
    (others refused by name)."""
    return hf_family(hf.get("model_type"), source).hf.from_config(hf, source)


# --------------------------------------------------------------------------- tokenizer files


def tokenizer_files(fam, max_len: int, specials: dict[str, str | None]) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json for a tokenizer.json of ours and a
    family (or its name): every special token named the family's way, the longest input, and
    whether the model reads segment ids (BERT does; GPT-2 would add the *token* embedding of a
    segment id, so it must not get them)."""
    files = family(fam).tokenizer_files
    tokens = files.tokens(specials)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "model_input_names": list(files.input_names),
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        **tokens,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": tokens}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
