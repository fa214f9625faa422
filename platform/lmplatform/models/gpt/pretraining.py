"""Causal LM examples (GPT, and the biLM that reads them both ways): documents joined with
end-of-text and cut into contiguous fixed-length blocks (no padding, no wasted compute)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from lmplatform.models.objective import ExamplesConfig, Objective, arrow_lists


class CausalBlockBuilder:
    """Ray Data callable class: documents -> contiguous blocks of `max_seq_len` token ids."""

    def __init__(self, tokenizer_json: str, cfg: dict):
        from tokenizers import Tokenizer

        from lmplatform.tokenization import EOT

        self.tok = Tokenizer.from_str(tokenizer_json)
        self.cfg = ExamplesConfig.model_validate(cfg)
        self.eot = self.tok.token_to_id(EOT)
        if self.eot is None:
            raise ValueError(f"causal LM examples need a tokenizer with {EOT!r} (a bpe tokenizer)")

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        stream: list[int] = []
        for enc in self.tok.encode_batch(texts, add_special_tokens=False):
            stream += enc.ids
            stream.append(self.eot)
        n = self.cfg.max_seq_len
        # the tail shorter than one block is dropped: at most n-1 tokens per batch of documents
        blocks = [stream[i : i + n] for i in range(0, len(stream) - n + 1, n)]
        return pa.table({"input_ids": arrow_lists(blocks, pa.int32())})


def causal_collate(batch: dict) -> dict[str, torch.Tensor]:
    """Fixed-length blocks stack without padding; the model shifts targets itself."""
    ids = torch.as_tensor(np.stack([np.asarray(r, dtype=np.int64) for r in batch["input_ids"]]))
    return {"input_ids": ids}


def causal_collator(tokenizer_json: str, cfg: ExamplesConfig, seed: int):
    return causal_collate  # nothing is drawn: no tokenizer, no seed


CAUSAL_LM = Objective("causal", CausalBlockBuilder, causal_collator, ("eval_loss", "ppl"))
"""Next-token prediction on contiguous blocks (the biLM reads them in both directions)."""
