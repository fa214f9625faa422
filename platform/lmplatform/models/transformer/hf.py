"""The encoder-decoder's adapters: its Hugging Face layout (`MarianMTModel`, the paper's
post-LN Transformer) and its tokenizer files. Our parameter names are Marian's below `model.`.
The family's row in models/families.py points here. Never imports `transformers`.
"""

from __future__ import annotations

import torch

from lmplatform.models.interop import HFAdapter, TokenizerFiles
from lmplatform.models.transformer.model import Transformer


def not_expressible(model: Transformer) -> str | None:
    """Why MarianMTModel does not compute this model (None: it does)."""
    c = model.cfg
    if c.pre_ln:
        return (
            "it is pre-LayerNorm, and MarianMTModel (the paper's layout in transformers) is "
            "post-LN; train with model.pre_ln: false to export"
        )
    if c.positions != "sinusoidal" or c.embedding_layer_norm or not c.scale_embedding:
        return (
            "it has BERT/GPT-style embeddings (learned positions, no sqrt(d) scaling or an "
            "embedding LayerNorm: a warm-started model), and MarianMTModel has the paper's"
        )
    if c.layer_norm_eps != 1e-5:
        return f"MarianMTModel's LayerNorms use eps 1e-5, this model {c.layer_norm_eps}"
    return None


def state(model: Transformer) -> dict[str, torch.Tensor]:
    # our names are MarianMTModel's below `model.` (embed_tokens and lm_head are tied to
    # `shared`; the sinusoidal positions are not weights)
    s = {f"model.{k}": v for k, v in model.named_parameters()}
    s["final_logits_bias"] = model.final_logits_bias.view(1, -1)
    return s


def config(model: Transformer, specials: dict[str, int | None]) -> dict:
    """MarianMTModel's config.json; a model it does not compute gets a model type transformers
    does not know (it refuses rather than misreads), with the weights still under Marian's
    names."""
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
        hf["model_type"] = "lmplatform_transformer"
        hf["architectures"] = ["LmplatformTransformer"]
        hf["_note"] = f"no transformers class ({why}): load it with lmplatform.models.io"
    return hf


def tokenizer_tokens(specials: dict[str, str | None]) -> dict[str, str]:
    return {k: specials[k] for k in ("pad_token", "bos_token", "eos_token") if specials.get(k)}


HF = HFAdapter(
    model_type="marian",
    state=state,
    config=config,
    not_expressible=not_expressible,
    ignored=(
        "lm_head.weight",  # tied to shared
        "embed_tokens.weight",  # tied to shared
        "embed_positions.weight",  # sinusoidal, not learned
    ),
)
TOKENIZER_FILES = TokenizerFiles(tokenizer_tokens, ("input_ids", "attention_mask"))
