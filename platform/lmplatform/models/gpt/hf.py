"""GPT's adapters: its Hugging Face layout (`GPT2Model` and its task classes) both ways, its
tokenizer files (shared by the biLM, which reads the same byte-level BPE), and how its blocks
warm-start the encoder-decoder's decoder. The family's row in models/families.py points here.
Never imports `transformers`.
"""

from __future__ import annotations

import torch
from torch import nn

from lmplatform.models.gpt.model import GPT, GPTConfig
from lmplatform.models.interop import HFAdapter, TokenizerFiles, WarmStart, require
from lmplatform.models.warm_start import layers_into

# --------------------------------------------------------------------------- weights


def encoder_state(g: GPT, prefix: str) -> dict[str, torch.Tensor]:
    """`GPT2Model`'s names -> views of ours."""
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


def pretraining_state(model: GPT) -> dict[str, torch.Tensor]:
    return encoder_state(model, "transformer.")  # the LM head is tied to wte


def task_state(model) -> dict[str, torch.Tensor]:
    """`GPT2ForSequenceClassification`'s bias-free `score`, or a `classifier` (token heads and
    frozen features)."""
    s = encoder_state(model.encoder, "transformer.")
    head = model.head
    if model.layout == "pooled" and not model.frozen:
        s["score.weight"] = head.weight
    else:
        s["classifier.weight"] = head.weight
        if head.bias is not None:
            s["classifier.bias"] = head.bias
    return s


# --------------------------------------------------------------------------- configs


def encoder_config(c: GPTConfig, specials: dict[str, int | None]) -> dict:
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


def pretraining_config(model: nn.Module, specials: dict[str, int | None]) -> dict:
    return {**encoder_config(model.cfg, specials), "architectures": ["GPT2LMHeadModel"]}


def from_config(hf: dict, source: str) -> GPTConfig:
    """Our config for a transformers GPT-2 config.json (what we compute differently refused)."""

    require(hf, "activation_function", "gelu_new", source)
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        require(hf, flag, False, source)
    require(hf, "scale_attn_weights", True, source)
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


def tokenizer_tokens(specials: dict[str, str | None]) -> dict[str, str]:
    """GPT-2's one end-of-text token is every special token it has."""
    eot = specials.get("eos_token")
    return {k: eot for k in ("bos_token", "eos_token", "unk_token", "pad_token") if eot}


# --------------------------------------------------------------------------- warm start

# the decoder layer's modules <- a GPT block's, besides the attention projections
_LAYER = {
    "self_attn_layer_norm": "ln_1",
    "fc1": "fc",
    "fc2": "proj",
    "final_layer_norm": "ln_2",
}


@torch.no_grad()
def warm_start(model: nn.Module, gpt: GPT, part: str) -> None:
    """GPT's blocks (pre-LN, causal, a final LayerNorm) into the decoder ("rnd2GPT")."""
    model.shared.weight.copy_(gpt.tok_emb.weight)
    stack = model.decoder
    n = stack.embed_positions.num_embeddings
    stack.embed_positions.weight.copy_(gpt.pos_emb.weight[:n])
    layers_into(stack, gpt.blocks, _LAYER)
    stack.layer_norm.load_state_dict(gpt.ln_f.state_dict())


# --------------------------------------------------------------------------- the family's values

HF = HFAdapter(
    model_type="gpt2",
    state=pretraining_state,
    config=pretraining_config,
    task_arch="GPT2",
    task_state=task_state,
    encoder_config=encoder_config,
    from_config=from_config,
    prefix="transformer.",
    ignored=("lm_head.weight", ".attn.bias", ".attn.masked_bias"),  # tied; causal-mask buffers
)
TOKENIZER_FILES = TokenizerFiles(tokenizer_tokens, ("input_ids", "attention_mask"))
WARM_START = WarmStart(
    parts=("decoder",),
    layout=dict(activation="gelu_tanh", pre_ln=True, embedding_layer_norm=False),
    fill=warm_start,
    why="GPT's blocks are causal: a decoder's",
)
