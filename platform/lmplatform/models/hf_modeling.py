"""Custom transformers code shipped as `modeling_lmplatform.py` in folders whose head no
transformers class computes: a sequence classifier on mean-pooled (frozen) features.

This file is copied into the model folder, never imported by lmplatform itself; transformers
loads it with `trust_remote_code=True` (and refuses the folder without it, rather than loading
BERT's pooler head, which would silently give other outputs).
"""

from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    ElectraConfig,
    ElectraModel,
    ElectraPreTrainedModel,
    GPT2Config,
    GPT2Model,
    GPT2PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolBertConfig(BertConfig):
    model_type = "lmplatform_meanpool_bert"


class MeanPoolGPT2Config(GPT2Config):
    model_type = "lmplatform_meanpool_gpt2"


class MeanPoolElectraConfig(ElectraConfig):
    model_type = "lmplatform_meanpool_electra"


def _mean(h, attention_mask):
    if attention_mask is None:
        return h.mean(dim=1)
    m = attention_mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def _output(logits, labels):
    loss = None
    if labels is not None:
        loss = nn.functional.cross_entropy(logits.float(), labels)
    return SequenceClassifierOutput(loss=loss, logits=logits)


class MeanPoolBertForSequenceClassification(BertPreTrainedModel):
    config_class = MeanPoolBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config)  # the pooler is stored (unused): the encoder is whole
        self.dropout = nn.Dropout(config.classifier_dropout or 0.0)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        h = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return _output(self.classifier(self.dropout(_mean(h, attention_mask))), labels)


class MeanPoolElectraForSequenceClassification(ElectraPreTrainedModel):
    config_class = MeanPoolElectraConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.electra = ElectraModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout or 0.0)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        h = self.electra(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return _output(self.classifier(self.dropout(_mean(h, attention_mask))), labels)


class MeanPoolGPT2ForSequenceClassification(GPT2PreTrainedModel):
    config_class = MeanPoolGPT2Config

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.dropout = nn.Dropout(config.classifier_dropout or 0.0)
        self.classifier = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **_):
        h = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return _output(self.classifier(self.dropout(_mean(h, attention_mask))), labels)


__all__ = [
    "MeanPoolBertConfig",
    "MeanPoolGPT2Config",
    "MeanPoolElectraConfig",
    "MeanPoolElectraForSequenceClassification",
    "MeanPoolBertForSequenceClassification",
    "MeanPoolGPT2ForSequenceClassification",
]
