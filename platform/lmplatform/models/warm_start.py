"""Warm-starting the encoder-decoder from a pretrained BERT or GPT (Rothe et al. 2020,
"Leveraging Pre-trained Checkpoints for Sequence Generation Tasks").

What a parent family can fill, the layout its layers need and the copying itself are the
family's (`Family.warm_start`, e.g. models/bert/hf.py): BERT's post-LN blocks fill the
encoder, the decoder or both; GPT's pre-LN causal blocks the decoder of a pre-LN model. This
module holds what they share: the checks, the encoder-decoder's config, and copying blocks with
a fused q/k/v projection into its layers.

Source, target and parent share the parent's tokenizer (so its token embeddings are the shared
matrix): BERT's [CLS] / [SEP] / [PAD] become start / end / padding, GPT's end-of-text all three.
This module imports no Ray or DeepSpeed.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lmplatform.models.layers import SelfAttention
from lmplatform.models.transformer.model import Attention, Stack, Transformer, TransformerConfig

Part = Literal["encoder", "decoder", "both"]


def _parents() -> dict:
    from lmplatform.models.families import FAMILIES  # the families' adapters import this module

    return {name: f.warm_start for name, f in FAMILIES.items() if f.warm_start is not None}


def check_part(parent, part: str | None, where: str) -> str:
    """The part of an encoder-decoder the `parent` config's weights warm-start (the family's
    default when None), or a ValueError naming why not."""
    family, parents = parent.family, _parents()
    if family not in parents:
        raise ValueError(
            f"{where}: a {family} model cannot warm-start an encoder-decoder "
            f"(parents: {', '.join(parents)})"
        )
    spec = parents[family]
    if (why := spec.refuses(parent)) is not None:
        raise ValueError(f"{where}: {why}")
    part = part or spec.parts[0]
    if part not in spec.parts:
        raise ValueError(
            f"{where}: warm_start={part!r} from a {family} parent is not supported; "
            f"it fills {' / '.join(spec.parts)}" + (f" ({spec.why})" if spec.why else "")
        )
    return part


def warm_start_config(parent, pad: int, bos: int, eos: int) -> TransformerConfig:
    """The encoder-decoder a parent's weights fit: its width, depth (both sides), heads,
    positions and LayerNorm placement."""
    spec = _parents().get(parent.family)
    if spec is None:
        raise ValueError(f"a {parent.family} model cannot warm-start an encoder-decoder")
    return TransformerConfig(
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
        **spec.layout,
    )


@torch.no_grad()
def warm_start(model: Transformer, parent: nn.Module, part: str) -> None:
    """Copy the parent's weights (its family's encoder: a BertEncoder, a GPT) into `model`
    (built from `warm_start_config` of the parent's config)."""
    spec = _parents().get(getattr(getattr(parent, "cfg", None), "family", None))
    if spec is None:
        raise TypeError(f"cannot warm-start from {type(parent).__name__}")
    spec.fill(model, parent, part)


def layers_into(stack: Stack, blocks: nn.ModuleList, names: dict[str, str]) -> None:
    """A parent's blocks into the stack's layers: the attention projections, and the modules
    `names` maps (ours -> the block's)."""
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
