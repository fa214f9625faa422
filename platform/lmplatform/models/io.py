"""`save_pretrained` / `from_pretrained` folders, and export to Hugging Face `transformers` folders.

Our folder: `model.safetensors` (shared tensors such as tied embeddings stored once),
`config.json` (family config, kind, task), and `tokenizer.json` when given. Folders are written
to a temporary sibling and renamed into place: a reader never sees half a model.

The Hugging Face export renames (and for GPT-2's Conv1D, transposes) weights so that
`BertForMaskedLM` / `BertForSequenceClassification` / `BertForTokenClassification` and
`GPT2LMHeadModel` / `GPT2ForSequenceClassification` / `GPT2ForTokenClassification` load them
and compute the same outputs. `transformers` itself is not needed to export.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from lmplatform.models.bert import BertConfig, BertEncoder
from lmplatform.models.gpt import GPT, GPTConfig
from lmplatform.models.lstm import BiLM, LSTMConfig
from lmplatform.models.tasks import TaskModel, build_encoder, build_pretraining_model, encoder_of

FORMAT_VERSION = 1
_CONFIGS = {"bert": BertConfig, "gpt": GPTConfig, "lstm": LSTMConfig}


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
    if isinstance(model, TaskModel):
        return {
            "kind": "task",
            "task": {"type": model.kind, "num_labels": model.num_labels, "frozen": model.frozen},
        }
    return {"kind": "pretraining"}


def save_pretrained(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    extra: dict | None = None,
) -> Path:
    """Write weights, config and tokenizer as one folder; `extra` lands in config.json (labels…)."""
    cfg = model.cfg
    meta = {
        "format_version": FORMAT_VERSION,
        "model": cfg.model_dump(),
        **_describe(model),
        **(extra or {}),
    }
    with _AtomicDir(out_dir) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        if tokenizer is not None:
            src = Path(tokenizer)
            shutil.copyfile(src / "tokenizer.json" if src.is_dir() else src, tmp / "tokenizer.json")
    return Path(out_dir)


def read_config(path: str | os.PathLike) -> dict:
    p = Path(path) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{path}: not a saved model (no config.json)")
    return json.loads(p.read_text())


def model_config(meta: dict):
    m = meta["model"]
    return _CONFIGS[m["family"]].model_validate(m)


def from_pretrained(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild the saved model (pretraining or task) with its weights."""
    meta = read_config(path)
    cfg = model_config(meta)
    if meta["kind"] == "task":
        t = meta["task"]
        model = TaskModel(
            build_encoder(cfg), t["type"], t["num_labels"], frozen=t.get("frozen", False)
        )
    else:
        model = build_pretraining_model(cfg)
    load_model(model, str(Path(path) / "model.safetensors"), device=map_location)
    return model


def task_model_from_pretrained(
    path: str | os.PathLike,
    kind: str,
    num_labels: int,
    frozen: bool = False,
    dropout: float | None = None,
) -> TaskModel:
    """A new task head on the encoder of a saved pretraining (or task) model."""
    source = from_pretrained(path)
    encoder = source.encoder if isinstance(source, TaskModel) else encoder_of(source)
    drop = dropout if dropout is not None else getattr(encoder.cfg, "dropout", 0.1)
    return TaskModel(encoder, kind, num_labels, dropout=drop, frozen=frozen)


# --------------------------------------------------------------------------- Hugging Face export


def _bert_encoder_state(enc: BertEncoder, prefix: str, pooler: bool) -> dict[str, torch.Tensor]:
    c = enc.cfg
    s = {
        f"{prefix}embeddings.word_embeddings.weight": enc.tok_emb.weight,
        f"{prefix}embeddings.position_embeddings.weight": enc.pos_emb.weight,
        f"{prefix}embeddings.token_type_embeddings.weight": enc.type_emb.weight,
        f"{prefix}embeddings.LayerNorm.weight": enc.emb_ln.weight,
        f"{prefix}embeddings.LayerNorm.bias": enc.emb_ln.bias,
    }
    for i, layer in enumerate(enc.layers):
        p = f"{prefix}encoder.layer.{i}."
        for name, w, b in zip(
            ("query", "key", "value"),
            layer.attn.qkv.weight.split(c.hidden_size),
            layer.attn.qkv.bias.split(c.hidden_size),
        ):
            s[f"{p}attention.self.{name}.weight"] = w
            s[f"{p}attention.self.{name}.bias"] = b
        for ours, theirs in (
            (layer.attn.out, "attention.output.dense"),
            (layer.attn_ln, "attention.output.LayerNorm"),
            (layer.ffn_in, "intermediate.dense"),
            (layer.ffn_out, "output.dense"),
            (layer.ffn_ln, "output.LayerNorm"),
        ):
            s[f"{p}{theirs}.weight"] = ours.weight
            s[f"{p}{theirs}.bias"] = ours.bias
    if pooler:
        s[f"{prefix}pooler.dense.weight"] = enc.pooler.weight
        s[f"{prefix}pooler.dense.bias"] = enc.pooler.bias
    return s


def _bert_hf_config(c: BertConfig, arch: str, pad_id: int) -> dict:
    return {
        "architectures": [arch],
        "model_type": "bert",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "intermediate_size": c.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.attention_dropout,
        "max_position_embeddings": c.max_seq_len,
        "type_vocab_size": c.type_vocab_size,
        "initializer_range": c.initializer_range,
        "layer_norm_eps": c.layer_norm_eps,
        "pad_token_id": pad_id,
        "tie_word_embeddings": True,
    }


def _gpt_state(g: GPT, prefix: str) -> dict[str, torch.Tensor]:
    s = {f"{prefix}wte.weight": g.tok_emb.weight, f"{prefix}wpe.weight": g.pos_emb.weight}
    for i, b in enumerate(g.blocks):
        p = f"{prefix}h.{i}."
        # GPT-2 uses Conv1D layers, whose weights are stored (in, out): the transpose of Linear
        for ours, theirs in (
            (b.attn.qkv, "attn.c_attn"),
            (b.attn.out, "attn.c_proj"),
            (b.fc, "mlp.c_fc"),
            (b.proj, "mlp.c_proj"),
        ):
            s[f"{p}{theirs}.weight"] = ours.weight.t()
            s[f"{p}{theirs}.bias"] = ours.bias
        for ours, theirs in ((b.ln_1, "ln_1"), (b.ln_2, "ln_2")):
            s[f"{p}{theirs}.weight"] = ours.weight
            s[f"{p}{theirs}.bias"] = ours.bias
    s[f"{prefix}ln_f.weight"] = g.ln_f.weight
    s[f"{prefix}ln_f.bias"] = g.ln_f.bias
    return s


def _gpt_hf_config(c: GPTConfig, arch: str, pad_id: int | None) -> dict:
    return {
        "architectures": [arch],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_embd": c.hidden_size,
        "n_layer": c.num_layers,
        "n_head": c.num_heads,
        "n_inner": c.intermediate_size,
        "n_positions": c.max_seq_len,
        "activation_function": "gelu_new",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_eps,
        "initializer_range": c.initializer_range,
        "pad_token_id": pad_id,
        "tie_word_embeddings": True,
    }


def export_hf(
    model: nn.Module,
    out_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    labels: list[str] | None = None,
    pad_id: int = 0,
) -> Path:
    """Write a folder that `transformers` loads with `AutoModelFor…` / the classes named above."""
    if isinstance(model, TaskModel):
        enc, kind = model.encoder, model.kind
    else:
        enc, kind = encoder_of(model), "pretraining"
    if isinstance(enc, BiLM):
        raise ValueError("the ELMo-style biLM has no Hugging Face counterpart to export to")
    is_bert = isinstance(enc, BertEncoder)
    if kind == "pretraining":
        if is_bert:
            m = model
            state = _bert_encoder_state(m.bert, "bert.", pooler=True)
            state.update(
                {
                    "cls.predictions.transform.dense.weight": m.mlm_dense.weight,
                    "cls.predictions.transform.dense.bias": m.mlm_dense.bias,
                    "cls.predictions.transform.LayerNorm.weight": m.mlm_ln.weight,
                    "cls.predictions.transform.LayerNorm.bias": m.mlm_ln.bias,
                    "cls.predictions.bias": m.mlm_bias,
                    "cls.seq_relationship.weight": m.nsp.weight,
                    "cls.seq_relationship.bias": m.nsp.bias,
                }
            )
            hf = _bert_hf_config(enc.cfg, "BertForPreTraining", pad_id)
        else:
            state = _gpt_state(enc, "transformer.")
            hf = _gpt_hf_config(enc.cfg, "GPT2LMHeadModel", pad_id)
    else:
        seq = kind != "token_classification"
        if is_bert:
            state = _bert_encoder_state(enc, "bert.", pooler=seq)
            state["classifier.weight"] = model.head.weight
            state["classifier.bias"] = model.head.bias
            arch = "BertForSequenceClassification" if seq else "BertForTokenClassification"
            hf = _bert_hf_config(enc.cfg, arch, pad_id)
            hf["classifier_dropout"] = model.drop.p
        else:
            state = _gpt_state(enc, "transformer.")
            if seq:
                state["score.weight"] = model.head.weight
            else:
                state["classifier.weight"] = model.head.weight
                state["classifier.bias"] = model.head.bias
            arch = "GPT2ForSequenceClassification" if seq else "GPT2ForTokenClassification"
            hf = _gpt_hf_config(enc.cfg, arch, pad_id)
            if not seq:
                hf["classifier_dropout"] = model.drop.p
        names = labels or [f"LABEL_{i}" for i in range(model.num_labels)]
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
    with _AtomicDir(out_dir) as tmp:
        save_file(
            {k: v.detach().contiguous().clone() for k, v in state.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        if tokenizer is not None:
            src = Path(tokenizer)
            shutil.copyfile(src / "tokenizer.json" if src.is_dir() else src, tmp / "tokenizer.json")
            (tmp / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"})
            )
    return Path(out_dir)
