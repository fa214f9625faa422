"""The Hugging Face `transformers` layout of our models: the one place that knows its names.

Our BERT and GPT modules compute exactly what `BertModel` / `GPT2Model` compute, so a model is
stored under transformers' weight names and config keys, and the mapping runs both ways:

- `hf_state(model)` maps every transformers weight name to a *view* of our parameter (GPT-2's
  Conv1D weights are the transpose of a Linear's; BERT's query/key/value are slices of our fused
  projection). Saving copies the views out; loading copies tensors into them.
- `hf_config` / `config_from_hf` translate the architecture both ways.
- `tokenizer_files` completes a `tokenizer.json` with what `AutoTokenizer` needs (every special
  token, `model_max_length`, `model_input_names`).

What transformers has no class for is marked rather than silently approximated: a sequence head
on frozen mean-pooled features ships the code it needs (`trust_remote_code=True` loads it; without
it transformers refuses), and the biLM gets a model type that transformers does not know.
`transformers` itself is never imported here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmplatform.models.bert import BertConfig, BertEncoder, BertForPretraining
from lmplatform.models.gpt import GPT, GPTConfig
from lmplatform.models.lstm import BiLM
from lmplatform.models.tasks import TaskModel, encoder_of
from lmplatform.models.transformer import Transformer

MEANPOOL_CODE = "modeling_lmplatform.py"  # shipped with mean-pool heads (see hf_modeling.py)
HF_FAMILIES = {"bert": "bert", "gpt2": "gpt"}  # transformers model_type -> our family


def not_expressible(model: nn.Module) -> str | None:
    """Why transformers cannot load this model with one of its own classes (None: it can)."""
    if isinstance(model, Transformer):
        if model.cfg.pre_ln:
            return (
                "it is pre-LayerNorm, and MarianMTModel (the paper's layout in transformers) is "
                "post-LN; train with model.pre_ln: false to export"
            )
        c = model.cfg
        if c.positions != "sinusoidal" or c.embedding_layer_norm or not c.scale_embedding:
            return (
                "it has BERT/GPT-style embeddings (learned positions, no sqrt(d) scaling or an "
                "embedding LayerNorm: a warm-started model), and MarianMTModel has the paper's"
            )
        if model.cfg.layer_norm_eps != 1e-5:
            return f"MarianMTModel's LayerNorms use eps 1e-5, this model {model.cfg.layer_norm_eps}"
        return None
    enc = model.encoder if isinstance(model, TaskModel) else encoder_of(model)
    if isinstance(enc, BiLM):
        return "the ELMo-style biLM has no transformers counterpart"
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


def _bert_encoder(enc: BertEncoder, prefix: str, pooler: bool) -> dict[str, torch.Tensor]:
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


def _gpt(g: GPT, prefix: str) -> dict[str, torch.Tensor]:
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


def hf_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """transformers weight name -> a view of our parameter, for a BERT or GPT model (any kind)."""
    if isinstance(model, BertForPretraining):
        s = _bert_encoder(model.bert, "bert.", pooler=True)
        s.update(
            {
                "cls.predictions.transform.dense.weight": model.mlm_dense.weight,
                "cls.predictions.transform.dense.bias": model.mlm_dense.bias,
                "cls.predictions.transform.LayerNorm.weight": model.mlm_ln.weight,
                "cls.predictions.transform.LayerNorm.bias": model.mlm_ln.bias,
                "cls.predictions.bias": model.mlm_bias,
                "cls.seq_relationship.weight": model.nsp.weight,
                "cls.seq_relationship.bias": model.nsp.bias,
            }
        )
        return s
    if isinstance(model, GPT):
        return _gpt(model, "transformer.")
    if isinstance(model, Transformer):
        # our names are MarianMTModel's below `model.` (embed_tokens and lm_head are tied to
        # `shared`; the sinusoidal positions are not weights)
        s = {f"model.{k}": v for k, v in model.named_parameters()}
        s["final_logits_bias"] = model.final_logits_bias.view(1, -1)
        return s
    if not isinstance(model, TaskModel) or isinstance(model.encoder, BiLM):
        raise ValueError(f"{type(model).__name__} has no transformers layout")
    enc, head = model.encoder, model.head
    seq = model.layout == "pooled"
    # a head's own extra weights (the predicate head's distance biases) keep our names
    extra = {f"classifier.{n}": p for n, p in head.named_parameters() if "." in n}
    if isinstance(enc, BertEncoder):
        s = _bert_encoder(enc, "bert.", pooler=seq)
        s["classifier.weight"], s["classifier.bias"] = head.weight, head.bias
        return {**s, **extra}
    s = _gpt(enc, "transformer.")
    if seq and not model.frozen:
        s["score.weight"] = head.weight  # GPT2ForSequenceClassification: bias-free
    else:
        s["classifier.weight"] = head.weight
        if head.bias is not None:
            s["classifier.bias"] = head.bias
    return {**s, **extra}


def state_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in hf_state(model).items()}


# buffers and tied copies that transformers checkpoints carry and our modules do not need
_IGNORED = (
    "embeddings.position_ids",
    "cls.predictions.decoder.weight",  # tied to the word embeddings
    "cls.predictions.decoder.bias",  # the same tensor as cls.predictions.bias
    "lm_head.weight",  # tied to wte (GPT-2) / shared (Marian)
    "embed_tokens.weight",  # Marian: tied to shared
    "embed_positions.weight",  # Marian: sinusoidal, not learned
    ".attn.bias",  # GPT-2's causal-mask buffer
    ".attn.masked_bias",
)


def load_hf_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> list[str]:
    """Copy a transformers state dict into our model. Checkpoints saved without the `bert.` /
    `transformer.` prefix (a bare BertModel / GPT2Model) are accepted. With `strict`, every one
    of our weights must be present; otherwise the missing ones keep their initialisation and are
    returned (a BertForMaskedLM checkpoint has no NSP head, say)."""
    targets = hf_state(model)
    prefixes = ("bert.", "transformer.")
    if any(t.startswith(prefixes) for t in targets) and not any(
        k.startswith(prefixes) for k in state
    ):
        state = {
            (p + k): v
            for k, v in state.items()
            for p in prefixes
            if any(t.startswith(p) for t in targets)
        }
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
    unexpected = [k for k in state if k not in targets and not k.endswith(_IGNORED)]
    if unexpected and strict:
        raise ValueError(f"{source}: unexpected weights: {', '.join(unexpected[:5])}")
    with torch.no_grad():
        if (
            isinstance(model, TaskModel)
            and isinstance(model.encoder, BertEncoder)
            and "bert.pooler.dense.weight" not in targets
        ):
            # a token head never reads BERT's pooler (transformers' class has none, so it is
            # not stored): a fixed value keeps reloaded encoders identical (shared groups
            # compare them)
            model.encoder.pooler.weight.zero_()
            model.encoder.pooler.bias.zero_()
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
    """config.json for a BERT / GPT model of any kind (architectures, ids, labels), or a
    MarianMTModel one for the encoder-decoder."""
    if isinstance(model, Transformer):
        return _marian_config(model)
    enc = model.encoder if isinstance(model, TaskModel) else encoder_of(model)
    if isinstance(enc, BiLM):
        return {
            "model_type": "lmplatform_bilm",
            "architectures": ["BiLM"],
            "_note": "the ELMo-style biLM has no transformers counterpart: load it with "
            "lmplatform.models.io.from_pretrained",
        }
    family = _HF_ENCODERS[enc.cfg.family]
    hf = family.config(enc.cfg, specials)
    if not isinstance(model, TaskModel):
        hf["architectures"] = [family.pretraining]
        return hf
    return _task_config(hf, model, labels, family.arch)


def _bert_config(c: BertConfig, specials: dict[str, int | None]) -> dict:
    pad = specials.get("pad")
    return {
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
        "position_embedding_type": "absolute",
        "pad_token_id": pad if pad is not None else 0,
        "tie_word_embeddings": True,
    }


def _gpt2_config(c: GPTConfig, specials: dict[str, int | None]) -> dict:
    eot = specials.get("eot")
    return {
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
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": specials.get("pad"),
        "tie_word_embeddings": True,
    }


@dataclass(frozen=True)
class _HfEncoder:
    arch: str
    """transformers' class-name prefix (`BertFor…`, `GPT2For…`)."""
    pretraining: str
    """transformers' class for the family's pretraining model."""
    config: Callable[..., dict]
    """(our encoder config, special-token ids) -> config.json without labels or classes."""


_HF_ENCODERS = {  # our family -> its transformers counterpart
    "bert": _HfEncoder("Bert", "BertForPreTraining", _bert_config),
    "gpt": _HfEncoder("GPT2", "GPT2LMHeadModel", _gpt2_config),
}


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


def _marian_config(model: Transformer) -> dict:
    c = model.cfg
    hf = {
        "model_type": "marian",
        "architectures": ["MarianMTModel"],
        "vocab_size": c.vocab_size,
        "decoder_vocab_size": c.vocab_size,
        "d_model": c.hidden_size,
        "encoder_layers": c.num_encoder_layers,
        "decoder_layers": c.num_decoder_layers,
        "encoder_attention_heads": c.num_heads,
        "decoder_attention_heads": c.num_heads,
        "encoder_ffn_dim": c.intermediate_size,
        "decoder_ffn_dim": c.intermediate_size,
        "activation_function": {"gelu_tanh": "gelu_new"}.get(c.activation, c.activation),
        "dropout": c.dropout,
        "attention_dropout": c.dropout,
        "activation_dropout": c.dropout,
        "max_position_embeddings": c.max_seq_len,
        "scale_embedding": True,
        "init_std": c.initializer_range,
        "pad_token_id": c.pad_token_id,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "decoder_start_token_id": c.bos_token_id,
        "forced_eos_token_id": c.eos_token_id,
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True,
        "is_encoder_decoder": True,
    }
    why = not_expressible(model)
    if why:
        # the weights keep Marian's names, but no transformers class computes this model: a
        # model type it does not know makes it refuse, not misread
        hf["model_type"] = "lmplatform_transformer"
        hf["architectures"] = ["LmplatformTransformer"]
        hf["_note"] = f"no transformers class ({why}): load it with lmplatform.models.io"
    return hf


def config_from_hf(hf: dict, source: str) -> BertConfig | GPTConfig:
    """Our config for a transformers BERT or GPT-2 config.json (others refused by name)."""
    kind = hf.get("model_type")
    if kind not in HF_FAMILIES:
        raise ValueError(
            f"{source}: model_type {kind!r} cannot be imported (supported: "
            f"{', '.join(HF_FAMILIES)}: BERT- and GPT-2-family checkpoints)"
        )

    def need(key, want, default=None):
        got = hf.get(key, default)
        if got != want:
            raise ValueError(f"{source}: {key}={got!r} is not supported (only {want!r})")

    if kind == "bert":
        need("hidden_act", "gelu", "gelu")
        need("position_embedding_type", "absolute", "absolute")
        return BertConfig(
            size="base",
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_seq_len=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 2),
            dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            initializer_range=hf.get("initializer_range", 0.02),
        )
    need("activation_function", "gelu_new", "gelu_new")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        need(flag, False, False)
    need("scale_attn_weights", True, True)
    n_embd = hf["n_embd"]
    return GPTConfig(
        size="base",
        vocab_size=hf["vocab_size"],
        hidden_size=n_embd,
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * n_embd,
        max_seq_len=hf["n_positions"],
        dropout=hf.get("resid_pdrop", 0.1),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        initializer_range=hf.get("initializer_range", 0.02),
    )


# --------------------------------------------------------------------------- tokenizer files


def tokenizer_files(family: str, max_len: int, specials: dict[str, str | None]) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json for a tokenizer.json of ours: every
    special token named, the longest input, and whether the model reads segment ids (BERT does;
    GPT-2 would add the *token* embedding of a segment id, so it must not get them)."""
    if family == "bert":
        tokens = {
            k: specials[k]
            for k in ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token")
            if specials.get(k)
        }
        names = ["input_ids", "token_type_ids", "attention_mask"]
    elif family == "transformer":
        tokens = {
            k: specials[k] for k in ("pad_token", "bos_token", "eos_token") if specials.get(k)
        }
        names = ["input_ids", "attention_mask"]
    else:
        eot = specials.get("eos_token")
        tokens = {k: eot for k in ("bos_token", "eos_token", "unk_token", "pad_token") if eot}
        names = ["input_ids", "attention_mask"]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "model_input_names": names,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        **tokens,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": tokens}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
