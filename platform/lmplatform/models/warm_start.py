"""Warm-starting the encoder-decoder from a pretrained BERT or GPT (Rothe et al. 2020,
"Leveraging Pre-trained Checkpoints for Sequence Generation Tasks").

- BERT's blocks are post-LN with learned positions and a LayerNorm on the embeddings: they fill
  the encoder ("BERT2rnd"), the decoder's self-attention and feed-forward ("rnd2BERT"; its
  cross-attention starts from scratch and its self-attention becomes causal), or both
  ("BERT2BERT"). Token type 0's embedding is folded into the position table.
- GPT's blocks are pre-LN and causal with a final LayerNorm: they fill the decoder of a pre-LN
  model whose encoder starts from scratch ("rnd2GPT").

Source, target and parent share the parent's tokenizer (so its token embeddings are the shared
matrix): BERT's [CLS] / [SEP] / [PAD] become start / end / padding, GPT's end-of-text all three.
This module imports no Ray or DeepSpeed.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lmplatform.models.bert import BertConfig, BertEncoder
from lmplatform.models.gpt import GPT, GPTConfig
from lmplatform.models.layers import SelfAttention
from lmplatform.models.transformer import Attention, Stack, Transformer, TransformerConfig

Part = Literal["encoder", "decoder", "both"]
PARTS: dict[str, tuple[str, ...]] = {"bert": ("both", "encoder", "decoder"), "gpt": ("decoder",)}
"""What each parent family can fill; the first is the default."""


def check_part(family: str, part: str | None, where: str) -> str:
    """The part to warm-start (the family's default when None), or a ValueError naming why not."""
    if family not in PARTS:
        raise ValueError(
            f"{where}: a {family} model cannot warm-start an encoder-decoder "
            f"(parents: {', '.join(PARTS)})"
        )
    part = part or PARTS[family][0]
    if part not in PARTS[family]:
        raise ValueError(
            f"{where}: warm_start={part!r} from a {family} parent is not supported; "
            f"it fills {' / '.join(PARTS[family])} (GPT's blocks are causal: a decoder's)"
        )
    return part


def warm_start_config(
    parent: BertConfig | GPTConfig, pad: int, bos: int, eos: int
) -> TransformerConfig:
    """The encoder-decoder a parent's weights fit: its width, depth (both sides), heads,
    positions and LayerNorm placement."""
    shared = dict(
        vocab_size=parent.vocab_size,
        hidden_size=parent.hidden_size,
        num_encoder_layers=parent.num_layers,
        num_decoder_layers=parent.num_layers,
        num_heads=parent.num_heads,
        intermediate_size=parent.intermediate_size,
        max_seq_len=parent.max_seq_len,
        positions="learned",
        scale_embedding=False,
        layer_norm_eps=parent.layer_norm_eps,
        initializer_range=parent.initializer_range,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
    )
    if isinstance(parent, BertConfig):
        return TransformerConfig(
            **shared, activation="gelu", pre_ln=False, embedding_layer_norm=True
        )
    return TransformerConfig(
        **shared, activation="gelu_tanh", pre_ln=True, embedding_layer_norm=False
    )


@torch.no_grad()
def warm_start(model: Transformer, parent: nn.Module, part: str) -> None:
    """Copy the parent's weights (a BertEncoder or a GPT) into `model` (built from
    `warm_start_config` of the parent's config)."""
    model.shared.weight.copy_(parent.tok_emb.weight)
    if isinstance(parent, BertEncoder):
        if part in ("encoder", "both"):
            _bert_into(model.encoder, parent)
        if part in ("decoder", "both"):
            _bert_into(model.decoder, parent)
    elif isinstance(parent, GPT):
        _gpt_into(model.decoder, parent)
    else:
        raise TypeError(f"cannot warm-start from {type(parent).__name__}")


# our layer's modules <- the parent block's, besides the attention projections
_BERT_LAYER = {
    "self_attn_layer_norm": "attn_ln",
    "fc1": "ffn_in",
    "fc2": "ffn_out",
    "final_layer_norm": "ffn_ln",
}
_GPT_LAYER = {
    "self_attn_layer_norm": "ln_1",
    "fc1": "fc",
    "fc2": "proj",
    "final_layer_norm": "ln_2",
}


def _bert_into(stack: Stack, bert: BertEncoder) -> None:
    n = stack.embed_positions.num_embeddings
    stack.embed_positions.weight.copy_(bert.pos_emb.weight[:n] + bert.type_emb.weight[0])
    stack.layernorm_embedding.load_state_dict(bert.emb_ln.state_dict())
    _layers_into(stack, bert.layers, _BERT_LAYER)


def _gpt_into(stack: Stack, gpt: GPT) -> None:
    n = stack.embed_positions.num_embeddings
    stack.embed_positions.weight.copy_(gpt.pos_emb.weight[:n])
    _layers_into(stack, gpt.blocks, _GPT_LAYER)
    stack.layer_norm.load_state_dict(gpt.ln_f.state_dict())


def _layers_into(stack: Stack, blocks: nn.ModuleList, names: dict[str, str]) -> None:
    for ours, theirs in zip(stack.layers, blocks, strict=True):
        _attention(ours.self_attn, theirs.attn)
        for mine, parents in names.items():
            getattr(ours, mine).load_state_dict(getattr(theirs, parents).state_dict())


def _attention(ours: Attention, theirs: SelfAttention) -> None:
    """The fused q/k/v projection split into three (rows: q, then k, then v)."""
    h = ours.q_proj.in_features
    w = theirs.qkv.weight.split(h, dim=0)
    b = theirs.qkv.bias.split(h) if theirs.qkv.bias is not None else (None,) * 3
    for proj, wi, bi in zip((ours.q_proj, ours.k_proj, ours.v_proj), w, b, strict=True):
        proj.weight.copy_(wi)
        if bi is not None:
            proj.bias.copy_(bi)
        else:
            proj.bias.zero_()
    ours.out_proj.weight.copy_(theirs.out.weight)
    if theirs.out.bias is not None:
        ours.out_proj.bias.copy_(theirs.out.bias)
    else:
        ours.out_proj.bias.zero_()
