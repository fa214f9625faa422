"""BERT's adapters: its Hugging Face layout (`BertModel` and its task classes) both ways, its
tokenizer files, and how its blocks warm-start the encoder-decoder. The family's row in
models/families.py points here; the mechanics around them are in models/hf.py and
models/warm_start.py. Never imports `transformers`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lmplatform.models.bert.model import BertConfig, BertEncoder, BertForPretraining
from lmplatform.models.interop import HFAdapter, TokenizerFiles, WarmStart, require
from lmplatform.models.warm_start import layers_into

# --------------------------------------------------------------------------- weights


def encoder_state(enc: BertEncoder, prefix: str, pooler: bool) -> dict[str, torch.Tensor]:
    """`BertModel`'s names -> views of our encoder (query/key/value: slices of our fused qkv)."""
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


def pretraining_state(model: BertForPretraining) -> dict[str, torch.Tensor]:
    """`BertForPreTraining`'s names: the encoder, the MLM transform and the NSP head."""
    s = encoder_state(model.bert, "bert.", pooler=True)
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


def task_state(model) -> dict[str, torch.Tensor]:
    """`BertFor{Sequence,Token}Classification`: the pooler only under a sequence head."""
    s = encoder_state(model.encoder, "bert.", pooler=model.layout == "pooled")
    s["classifier.weight"], s["classifier.bias"] = model.head.weight, model.head.bias
    return s


def fixed_pooler_unless(stored: str):
    """`fill_unstored` for a family whose pooler is stored under `stored` only with some heads."""

    @torch.no_grad()
    def fill(model, views: dict) -> None:
        # a head that never reads the pooler does not store it (transformers' class has none):
        # a fixed value keeps reloaded encoders identical (shared groups compare them)
        if stored not in views:
            model.encoder.pooler.weight.zero_()
            model.encoder.pooler.bias.zero_()

    return fill


# --------------------------------------------------------------------------- configs


def encoder_config(c: BertConfig, specials: dict[str, int | None]) -> dict:
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


def pretraining_config(model: nn.Module, specials: dict[str, int | None]) -> dict:
    return {**encoder_config(model.cfg, specials), "architectures": ["BertForPreTraining"]}


def from_config(hf: dict, source: str) -> BertConfig:
    """Our config for a transformers BERT config.json (what we compute differently refused)."""

    require(hf, "hidden_act", "gelu", source)
    require(hf, "position_embedding_type", "absolute", source)
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


# --------------------------------------------------------------------------- tokenizer files


def tokenizer_tokens(specials: dict[str, str | None]) -> dict[str, str]:
    keys = ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token")
    return {k: specials[k] for k in keys if specials.get(k)}


def vocab_tokenizer(folder: Path, settings: dict) -> str | None:
    """tokenizer.json from an older checkpoint's vocab.txt (WordPiece)."""
    if not (folder / "vocab.txt").is_file():
        return None
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(
        str(folder / "vocab.txt"), lowercase=settings.get("do_lower_case", True)
    )
    return tok.to_str()


# --------------------------------------------------------------------------- warm start

# the encoder-decoder's layer modules <- a BERT layer's, besides the attention projections
_LAYER = {
    "self_attn_layer_norm": "attn_ln",
    "fc1": "ffn_in",
    "fc2": "ffn_out",
    "final_layer_norm": "ffn_ln",
}


@torch.no_grad()
def warm_start(model: nn.Module, bert: BertEncoder, part: str) -> None:
    """BERT's layers into the encoder ("BERT2rnd"), the decoder's self-attention and
    feed-forward ("rnd2BERT"), or both; token type 0's embedding is folded into the positions."""
    model.shared.weight.copy_(bert.tok_emb.weight)
    if part in ("encoder", "both"):
        _into(model.encoder, bert)
    if part in ("decoder", "both"):
        _into(model.decoder, bert)


def _into(stack: nn.Module, bert: BertEncoder) -> None:
    n = stack.embed_positions.num_embeddings
    stack.embed_positions.weight.copy_(bert.pos_emb.weight[:n] + bert.type_emb.weight[0])
    stack.layernorm_embedding.load_state_dict(bert.emb_ln.state_dict())
    layers_into(stack, bert.layers, _LAYER)


# --------------------------------------------------------------------------- the family's values

HF = HFAdapter(
    model_type="bert",
    state=pretraining_state,
    config=pretraining_config,
    task_arch="Bert",
    task_state=task_state,
    encoder_config=encoder_config,
    from_config=from_config,
    prefix="bert.",
    fresh_ok=("cls.", "bert.pooler."),  # a BertForMaskedLM has no pooler and no NSP head
    ignored=(
        "embeddings.position_ids",
        "cls.predictions.decoder.weight",  # tied to the word embeddings
        "cls.predictions.decoder.bias",  # the same tensor as cls.predictions.bias
    ),
    vocab_tokenizer=vocab_tokenizer,
    fill_unstored=fixed_pooler_unless("bert.pooler.dense.weight"),
)
TOKENIZER_FILES = TokenizerFiles(
    tokenizer_tokens, ("input_ids", "token_type_ids", "attention_mask")
)
WARM_START = WarmStart(
    parts=("both", "encoder", "decoder"),
    layout=dict(activation="gelu", pre_ln=False, embedding_layer_norm=True),
    fill=warm_start,
)
