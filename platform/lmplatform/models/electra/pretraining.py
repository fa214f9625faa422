"""ELECTRA's pretraining examples: BERT's examples as single segments (no next-sentence
prediction, which ELECTRA drops), masked per batch by BERT's collator; the model turns the masks
into the generator's task and the generator's samples into the discriminator's."""

from __future__ import annotations

from lmplatform.models.bert.pretraining import BertPairBuilder, bert_collator
from lmplatform.models.objective import Objective


class ElectraBuilder(BertPairBuilder):
    """Ray Data callable class: a batch of documents -> single segments of whole sentences."""

    def __init__(self, tokenizer_json: str, cfg: dict):
        super().__init__(tokenizer_json, {**cfg, **ELECTRA.examples_fixed})


ELECTRA = Objective(
    "electra",
    ElectraBuilder,
    bert_collator,
    ("eval_loss", "mlm_acc", "rtd_acc"),
    examples_fixed={"nsp": False},
)
"""ELECTRA: replaced-token detection, with the masked-LM generator trained alongside."""
