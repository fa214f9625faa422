"""ELECTRA's adapters: the discriminator in transformers' layout (`ElectraForPreTraining`,
`ElectraModel`, `ElectraFor{Sequence,Token}Classification`) both ways; BERT's tokenizer files and
warm start (the layers are BERT's). The generator is a training-time helper: it is kept in
training checkpoints, not in saved folders (a model loaded from one starts a new generator if it
pretrains again). Never imports `transformers`.
"""

from __future__ import annotations

import torch
from torch import nn

from lmplatform.models.bert import hf as bert_hf
from lmplatform.models.electra.model import ElectraConfig, ElectraEncoder, ElectraForPretraining
from lmplatform.models.interop import HFAdapter, WarmStart

# --------------------------------------------------------------------------- weights


def encoder_state(enc: ElectraEncoder, prefix: str) -> dict[str, torch.Tensor]:
    """`ElectraModel`'s names: BERT's without the pooler, plus the embedding projection."""
    s = bert_hf.encoder_state(enc, prefix, pooler=False)
    if enc.emb_proj is not None:
        s[f"{prefix}embeddings_project.weight"] = enc.emb_proj.weight
        s[f"{prefix}embeddings_project.bias"] = enc.emb_proj.bias
    return s


def pretraining_state(model: ElectraForPretraining) -> dict[str, torch.Tensor]:
    """`ElectraForPreTraining`: the discriminator and its replaced-token head."""
    s = encoder_state(model.electra, "electra.")
    s.update(
        {
            "discriminator_predictions.dense.weight": model.disc_dense.weight,
            "discriminator_predictions.dense.bias": model.disc_dense.bias,
            "discriminator_predictions.dense_prediction.weight": model.disc_out.weight,
            "discriminator_predictions.dense_prediction.bias": model.disc_out.bias,
        }
    )
    return s


def task_state(model) -> dict[str, torch.Tensor]:
    """`ElectraForSequenceClassification`'s two-layer classifier (our encoder's `pooler` is its
    dense layer) or a plain `classifier` (token heads, frozen mean-pooled features)."""
    s = encoder_state(model.encoder, "electra.")
    if model.layout == "pooled" and not model.frozen:
        s["classifier.dense.weight"] = model.encoder.pooler.weight
        s["classifier.dense.bias"] = model.encoder.pooler.bias
        s["classifier.out_proj.weight"], s["classifier.out_proj.bias"] = (
            model.head.weight,
            model.head.bias,
        )
    else:
        s["classifier.weight"], s["classifier.bias"] = model.head.weight, model.head.bias
    return s


# --------------------------------------------------------------------------- configs


def encoder_config(c: ElectraConfig, specials: dict[str, int | None]) -> dict:
    hf = bert_hf.encoder_config(c, specials)
    hf.update(
        model_type="electra",
        embedding_size=c.embedding_width,
        # transformers' defaults for the summary head, which only its multiple-choice class reads
        summary_type="first",
        summary_use_proj=True,
        summary_activation="gelu",
        summary_last_dropout=0.1,
    )
    return hf


def pretraining_config(model: nn.Module, specials: dict[str, int | None]) -> dict:
    return {**encoder_config(model.cfg, specials), "architectures": ["ElectraForPreTraining"]}


_GENERATOR = "ElectraForMaskedLM"  # transformers' class of ELECTRA's generator


def from_config(hf: dict, source: str) -> ElectraConfig:
    """Our config for a transformers ELECTRA config.json (the generator gets our default
    fraction: checkpoints hold the discriminator). A generator checkpoint is refused: its
    encoder is a fraction of the discriminator's width, and importing it silently would hand a
    user the weaker encoder under the discriminator's name."""
    if _GENERATOR in (hf.get("architectures") or []):
        raise ValueError(
            f"{source}: {_GENERATOR} is ELECTRA's generator, not the encoder fine-tuning starts "
            "from; import the discriminator (ElectraForPreTraining, e.g. "
            "google/electra-small-discriminator)"
        )
    bert = bert_hf.from_config(hf, source)
    embedding = hf.get("embedding_size", 128)  # transformers' ElectraConfig default
    return ElectraConfig(
        **bert.model_dump(exclude={"family"}),
        embedding_size=None if embedding == bert.hidden_size else embedding,
    )


# --------------------------------------------------------------------------- warm start


def warm_start(model: nn.Module, encoder: ElectraEncoder, part: str) -> None:
    if (why := _refuses(encoder.cfg)) is not None:
        raise ValueError(why)
    bert_hf.warm_start(model, encoder, part)


def _refuses(cfg) -> str | None:
    return _NARROW if cfg.embedding_width != cfg.hidden_size else None


_NARROW = (
    "an ELECTRA with embeddings narrower than its layers (embedding_size < hidden_size) cannot "
    "warm-start an encoder-decoder, whose embeddings are its layers' width"
)

# --------------------------------------------------------------------------- the family's values

HF = HFAdapter(
    model_type="electra",
    state=pretraining_state,
    config=pretraining_config,
    task_arch="Electra",
    task_state=task_state,
    encoder_config=encoder_config,
    from_config=from_config,
    prefix="electra.",
    fresh_ok=("discriminator_predictions.",),  # a bare ElectraModel has no head
    ignored=("embeddings.position_ids", "embeddings.token_type_ids"),
    vocab_tokenizer=bert_hf.vocab_tokenizer,
    # the classifier's dense layer is stored only under a fine-tuned sequence head
    fill_unstored=bert_hf.fixed_pooler_unless("classifier.dense.weight"),
)
TOKENIZER_FILES = bert_hf.TOKENIZER_FILES
WARM_START = WarmStart(
    parts=bert_hf.WARM_START.parts,
    layout=bert_hf.WARM_START.layout,
    fill=warm_start,
    refuses=_refuses,
)
