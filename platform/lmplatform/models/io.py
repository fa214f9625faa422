"""Saved model folders: ours and transformers' at once, plus import from transformers folders.

A folder is what `transformers` expects (see `models/hf.py` for the mapping):

    config.json                 transformers config (model_type, architectures, id2label, …)
    model.safetensors           weights under transformers' names (tied tensors stored once)
    tokenizer.json              the `tokenizers` tokenizer, with tokenizer_config.json and
                                special_tokens_map.json naming every special token
    metadata.json               platform data only: our model config, kind, head, labels, …
    modeling_lmplatform.py      only for heads transformers has no class for (mean pooling)

so `AutoModel….from_pretrained(folder)` and `pipeline(…, model=folder)` work on every BERT and
GPT folder we write, the registry's included (publish merges this metadata.json into the
version's). The biLM keeps our own weight names. Folders are written to a temporary sibling
and renamed into place: a reader never sees half a model. Folders of format 1 (our config in
config.json, our weight names) still load.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from lmplatform.models import hf
from lmplatform.models.families import family
from lmplatform.models.tasks import (
    LEGACY_LAYOUTS,
    TaskModel,
    build_encoder,
    build_pretraining_model,
    encoder_of,
)

FORMAT_VERSION = 2
META = "metadata.json"
WEIGHTS = "model.safetensors"


class _AtomicDir:
    """Write into `<dir>.tmp-xxxx`, then swap it into place (old version removed after)."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def _describe(model: nn.Module) -> dict:
    task = family(model.cfg).whole_model_task
    if task is not None:  # the encoder-decoder is the task model
        return {
            "kind": "task",
            "head": {"type": task, "layout": task, "num_labels": 0, "frozen": False},
        }
    if isinstance(model, TaskModel):
        return {
            "kind": "task",
            "head": {
                "type": model.kind,
                "layout": model.layout,
                "num_labels": model.num_labels,
                "frozen": model.frozen,
            },
        }
    return {"kind": "pretrained"}


def _specials(tokenizer_json: Path | None) -> tuple[dict, dict]:
    """(ids, token strings) of the special tokens a tokenizer.json defines."""
    if tokenizer_json is None:
        return {"pad": 0}, {}
    from lmplatform.tokenization import (
        BERT_SPECIALS,
        EOT,
        SEQ2SEQ_SPECIALS,
        load_tokenizer,
        special_tokens,
    )

    tok = load_tokenizer(tokenizer_json)
    ids = vars(special_tokens(tok))
    vocab = tok.get_vocab()
    names = dict(zip(("pad", "unk", "cls", "sep", "mask"), BERT_SPECIALS))
    strings = {f"{k}_token": v for k, v in names.items() if v in vocab}
    if EOT in vocab:
        strings["eos_token"] = EOT
    if all(t in vocab for t in SEQ2SEQ_SPECIALS):
        strings.update(zip(("pad_token", "bos_token", "eos_token"), SEQ2SEQ_SPECIALS))
    return ids, strings


def save_pretrained(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    extra: dict | None = None,
) -> Path:
    """Write weights, configs and tokenizer as one folder that we and transformers both load;
    `extra` (labels, max_seq_len, task name…) lands in metadata.json."""
    cfg = model.cfg
    meta = {"format_version": FORMAT_VERSION, "model": cfg.model_dump(), **_describe(model)}
    meta.update(extra or {})
    tok_file = None
    if tokenizer is not None:
        tok_file = Path(tokenizer)
        tok_file = tok_file / "tokenizer.json" if tok_file.is_dir() else tok_file
    ids, strings = _specials(tok_file)
    with _AtomicDir(out_dir) as tmp:
        if family(cfg).hf is None:  # our own weight names
            save_model(model, str(tmp / WEIGHTS))
        else:
            save_file(hf.state_to_save(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        config = hf.hf_config(model, meta.get("labels"), ids)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if hf.uses_mean_pool(model):
            shutil.copyfile(Path(hf.__file__).with_name("hf_modeling.py"), tmp / hf.MEANPOOL_CODE)
        if tok_file is not None:
            shutil.copyfile(tok_file, tmp / "tokenizer.json")
            max_len = int(meta.get("max_seq_len") or cfg.max_seq_len)
            for name, content in hf.tokenizer_files(cfg, max_len, strings).items():
                (tmp / name).write_text(json.dumps(content, indent=2))
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return Path(out_dir)


def read_config(path: str | os.PathLike) -> dict:
    """A saved folder's platform data (metadata.json; in the registry, the version's metadata)."""
    folder = Path(path)
    if (folder / META).is_file():
        meta = json.loads((folder / META).read_text())
        if "model" in meta:
            return meta
    legacy = folder / "config.json"
    if legacy.is_file():
        old = json.loads(legacy.read_text())
        if "model" in old and "format_version" in old:  # format 1: our data in config.json
            head = old.pop("task", None)
            kind = "task" if old.get("kind") == "task" else "pretrained"
            return {**old, "kind": kind, **({"head": head} if head else {})}
        if "model_type" in old:
            raise FileNotFoundError(
                f"{path}: a transformers folder, not one of ours: use it as `parent: hf:{path}` "
                f"(or `init_from: hf:{path}`) to import it"
            )
    raise FileNotFoundError(f"{path}: not a saved model (no {META} describing it)")


def model_config(meta: dict):
    m = meta["model"]
    return family(m["family"]).config.model_validate(m)


def from_pretrained(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild the saved model (pretraining or task) with its weights."""
    meta = read_config(path)
    if isinstance(meta.get("adapter"), dict):
        raise ValueError(
            f"{path}: an adapter version (LoRA on pretrained/{meta['adapter'].get('base')}), "
            "not a whole model: serve it on its own or in adapter_groups (not in a "
            "shared-encoder group), load it with its base (lmplatform.registry.adapters."
            "load_task_model), or export it (lmplatform-registry export)"
        )
    cfg = model_config(meta)
    if meta["kind"] == "task" and family(cfg).whole_model_task is not None:
        model = build_pretraining_model(cfg)  # the encoder-decoder is the whole task model
    elif meta["kind"] == "task":
        h = meta["head"]
        model = TaskModel(
            build_encoder(cfg),
            h["type"],
            h["num_labels"],
            frozen=h.get("frozen", False),
            layout=h.get("layout") or LEGACY_LAYOUTS[h["type"]],
        )
    else:
        model = build_pretraining_model(cfg)
    load_weights(model, path, meta, map_location)
    return model


def load_weights(
    model: nn.Module, path: str | os.PathLike, meta: dict | None = None, map_location="cpu"
) -> None:
    """Every weight of a saved folder into `model` (which must have its architecture)."""
    meta = meta or read_config(path)
    file = str(Path(path) / WEIGHTS)
    if meta.get("format_version", 1) >= 2 and family(meta["model"]["family"]).hf is not None:
        hf.load_hf_state(model, load_file(file, device=map_location), str(path))
    else:
        load_model(model, file, strict=True, device=map_location)


def task_model_from_pretrained(
    path: str | os.PathLike,
    kind: str,
    num_labels: int,
    frozen: bool = False,
    dropout: float | None = None,
    layout: str | None = None,
) -> TaskModel:
    """A new task head on the encoder of a saved pretraining (or task) model."""
    source = from_pretrained(path)
    encoder = source.encoder if isinstance(source, TaskModel) else encoder_of(source)
    drop = dropout if dropout is not None else getattr(encoder.cfg, "dropout", 0.1)
    return TaskModel(encoder, kind, num_labels, dropout=drop, frozen=frozen, layout=layout)


# --------------------------------------------------------------------------- transformers


def export_hf(src: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A saved folder (a registry version, say) as a folder for transformers alone. Current
    folders already are one; older ones are rewritten. The biLM is refused: transformers has
    no class for it."""
    meta = read_config(src)
    model = from_pretrained(src)
    why = hf.not_expressible(model)
    if why and not hf.uses_mean_pool(model):
        raise ValueError(f"{src}: cannot export to transformers: {why}")
    keep = ("labels", "classes", "entity_types", "max_seq_len", "task_name", "decoding")
    tok = Path(src) / "tokenizer.json"
    save_pretrained(
        model,
        out_dir,
        tokenizer=tok if tok.is_file() else None,
        extra={k: meta[k] for k in keep if meta.get(k) is not None},
    )
    return Path(out_dir)


def load_hf_folder(folder: str | os.PathLike) -> tuple[nn.Module, str, list[str]]:
    """A transformers BERT / GPT-2 checkpoint folder as our pretraining model: (model, the
    tokenizer as tokenizer.json text, weights that were not in it and keep their initialisation
    — heads only: an incomplete encoder is refused)."""
    folder = Path(folder)
    src = str(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json (not a transformers model folder)")
    hf_cfg = hf.read_json(folder / "config.json")
    cfg = hf.config_from_hf(hf_cfg, src)
    adapter = family(cfg).hf
    model = build_pretraining_model(cfg)
    missing = hf.load_hf_state(model, _hf_weights(folder), src, strict=False)
    # heads (BERT's MLM, NSP and pooler: a BertForMaskedLM has no pooler) may be absent:
    # they keep their initialisation and fine-tuning trains them
    encoder_missing = [k for k in missing if not k.startswith(adapter.fresh_ok)]
    if encoder_missing:
        raise ValueError(
            f"{src}: the checkpoint lacks encoder weights ({', '.join(encoder_missing[:3])}…)"
        )
    tok = _hf_tokenizer(folder, adapter.vocab_tokenizer)
    from tokenizers import Tokenizer

    size = Tokenizer.from_str(tok).get_vocab_size()
    if size > cfg.vocab_size:
        raise ValueError(
            f"{src}: the tokenizer has {size} tokens, the model's embeddings {cfg.vocab_size}"
        )
    return model, tok, missing


def _hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / WEIGHTS).is_file():
        return load_file(str(folder / WEIGHTS))
    index = folder / f"{WEIGHTS}.index.json"
    if index.is_file():  # sharded
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    if (folder / "pytorch_model.bin").is_file():  # older checkpoints; no pickled code is run
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no {WEIGHTS} (or pytorch_model.bin) with the weights")


def _hf_tokenizer(folder: Path, from_vocab) -> str:
    """tokenizer.json text; for checkpoints saved without one, built from the family's own
    vocabulary files (`from_vocab`: BERT's vocab.txt) or vocab.json + merges.txt (GPT-2)."""
    if (folder / "tokenizer.json").is_file():
        return (folder / "tokenizer.json").read_text()
    from tokenizers.implementations import ByteLevelBPETokenizer

    settings = {}
    if (folder / "tokenizer_config.json").is_file():
        settings = hf.read_json(folder / "tokenizer_config.json")
    tok = from_vocab(folder, settings) if from_vocab is not None else None
    if tok is not None:
        return tok
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        tok = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        return tok.to_str()
    raise FileNotFoundError(
        f"{folder}: no tokenizer (tokenizer.json, vocab.txt or vocab.json + merges.txt)"
    )
