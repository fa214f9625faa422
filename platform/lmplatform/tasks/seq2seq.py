"""Sequence to sequence (translation): a source text in, a target text out.

Rows are pairs from two aligned files (`path` + `target_path`) or a TSV/CSV/JSONL with a source
and a target column. A pair with an empty side, or whose sides differ in length far more than
translations do (`MAX_LENGTH_RATIO`), is a bad row: counted, reported with its file and line,
and the run fails above `max_bad_fraction`. Files that do not pair up line by line are refused
before reading (lmplatform.data.sources).

The model is the whole encoder-decoder (layout `seq2seq`: no head). Scores are corpus BLEU and
chrF as sacrebleu computes them (its default 13a tokenisation, on detokenised output): greedy
decoding while a search runs, beam search (`decoding`) for the final dev score and serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from pydantic import BaseModel, Field

from lmplatform.config import StrictModel
from lmplatform.tasks.base import Encoding, InputError, Item, Scorer, TaskType, parse_text

# a pair whose longer side has more than 3x the characters of the shorter (+ 10, so that short
# captions like "Ja." / "Yes, he does." pass) is a misalignment or junk, not a translation
MAX_LENGTH_RATIO = 3.0
LENGTH_SLACK = 10


class DecodingConfig(StrictModel):
    """How a translation is decoded for the final dev score and when served."""

    num_beams: int = Field(4, ge=1, le=16)
    """Beam size (1: greedy). Searches score trials greedily, for speed."""
    length_penalty: float = Field(1.0, ge=0.0, le=5.0)
    """Beam hypotheses are ranked by log-probability / length ** length_penalty."""
    max_new_tokens: int = Field(128, ge=1, le=4096)
    """Most tokens one output may have; also the most a request may ask for."""
    length_ratio: float = Field(2.0, gt=0.0, le=20.0)
    """Guard: an output stops at length_ratio x source tokens + length_offset."""
    length_offset: int = Field(10, ge=0, le=1000)
    max_beams: int = Field(8, ge=1, le=64)
    """The most beams a request may ask for (HTTP 422 above)."""


class Seq2SeqPrediction(BaseModel):
    text: str
    """The output, detokenised."""
    tokens: int
    """Output tokens generated (EOS not counted)."""
    truncated: bool
    """The output stopped at its length limit (max_new_tokens or the source-length guard) before
    the model ended it, or the input was cut to the model's length."""


def _limits(d: DecodingConfig, max_new_tokens: int | None = None):
    from lmplatform.models.generation import DecodeLimits

    return DecodeLimits(
        max_new_tokens=max_new_tokens or d.max_new_tokens,
        length_ratio=d.length_ratio,
        length_offset=d.length_offset,
    )


class Seq2SeqScorer(Scorer):
    """Decodes each batch's sources and scores the outputs against the references."""

    def __init__(self, task: Seq2Seq, model, encoder, decoding: DecodingConfig, num_beams: int):
        self.task, self.model, self.encoder, self.decoding = task, model, encoder, decoding
        self.options = {"num_beams": num_beams, "max_new_tokens": decoding.max_new_tokens}
        self.hyps: list[str] = []
        self.refs: list[str] = []
        self.cut = 0

    def add(self, logits: torch.Tensor, batch: dict, rows: list[dict]) -> None:
        preds = self.task.generate(self.model, batch, self.encoder, self.decoding, self.options)
        self.add_labels([p["text"] for p in preds], rows)
        self.cut += sum(p["truncated"] for p in preds)

    def add_labels(self, predicted: list[str], rows: list[dict]) -> None:
        """`predicted`: one output text per row."""
        self.hyps += predicted
        self.refs += [r["target"] for r in rows]

    def counts(self):
        # sacrebleu's corpus scores are functions of per-sentence statistics summed over the
        # corpus (BLEU: n-gram matches and totals, lengths; chrF: character and word n-grams)
        bleu, chrf = _corpus_metrics()
        return {
            "bleu": _summed(bleu, self.hyps, self.refs),
            "chrf": _summed(chrf, self.hyps, self.refs),
            "outputs": [self.cut, len(self.hyps)],
        }

    def result_of(self, counts):
        bleu, chrf = _corpus_metrics()
        cut, n = counts["outputs"]
        metrics = {
            "bleu": bleu._compute_score_from_stats(counts["bleu"]).score,
            "chrf": chrf._compute_score_from_stats(counts["chrf"]).score,
            "cut_outputs": cut / max(n, 1),
        }
        return metrics, {}


def _corpus_metrics():
    """sacrebleu's BLEU and chrF with the defaults `corpus_bleu` / `corpus_chrf` use."""
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU(), CHRF()


def _summed(metric, hyps: list[str], refs: list[str]) -> list[int]:
    """`metric`'s statistics of every sentence, summed (zeros of the right width for none)."""
    stats = metric._extract_corpus_statistics(hyps or ["-"], [refs or ["-"]])
    return [sum(column) if hyps else 0 for column in zip(*stats)]


class Seq2Seq(TaskType):
    name = "seq2seq"
    layout = "seq2seq"
    metrics = ("bleu", "chrf")
    columns: ClassVar[dict[str, str]] = {"source": "string", "target": "string"}
    input_schema = str
    prediction_schema = Seq2SeqPrediction
    smoke_input = "Hello ."
    whole_model = True
    generates = True

    def check_config(self, task) -> None:
        if task.labels is not None or task.label_names is not None:
            raise ValueError("seq2seq tasks have no labels: remove `labels` / `label_names`")

    def rows(self, rec: dict, source, labels) -> Iterator[tuple[dict, str | None]]:
        src, tgt = rec.get(source.text_column), rec.get(source.target_column)
        if src is None or tgt is None:
            missing = source.text_column if src is None else source.target_column
            yield {}, f"missing column {missing!r} (set text_column / target_column)"
            return
        src, tgt = str(src).strip(), str(tgt).strip()
        if not src or not tgt:
            yield {}, f"empty {'source' if not src else 'target'} side"
            return
        short, long = sorted((len(src), len(tgt)))
        if long > MAX_LENGTH_RATIO * short + LENGTH_SLACK:
            yield (
                {},
                (
                    f"length ratio outlier: source {len(src)} chars, target {len(tgt)} chars "
                    f"(more than {MAX_LENGTH_RATIO:g}x apart: misaligned?)"
                ),
            )
            return
        yield {"source": src, "target": tgt}, None

    def finish(self, ds, labels):
        return ds, []

    def outputs(self, labels, label_names) -> list[str]:
        return []

    def classes(self, labels, label_names) -> list[str]:
        return []

    # ------------------------------------------------------------------ model

    def ids(self, enc, texts: list[str]) -> list[list[int]]:
        """Token ids ending in EOS, cut to the task's length (the EOS is kept)."""
        eos = enc.sp.eos
        return [
            e.ids[: enc.max_len - 1] + [eos]
            for e in enc.tok.encode_batch(texts, add_special_tokens=False)
        ]

    def collate(self, enc, rows: list[dict]) -> dict[str, torch.Tensor]:
        src = self.ids(enc, [r["source"] for r in rows])
        tgt = self.ids(enc, [r["target"] for r in rows])
        B, S, T = len(rows), max(map(len, src)), max(map(len, tgt))
        input_ids = torch.full((B, S), enc.sp.pad, dtype=torch.long)
        attention = torch.zeros((B, S), dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        for i, (s, t) in enumerate(zip(src, tgt)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention[i, : len(s)] = 1
            labels[i, : len(t)] = torch.tensor(t)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def scorer(self, outputs, classes, *, model=None, encoder=None, task=None, final=False):
        decoding = task.decoding or DecodingConfig()
        return Seq2SeqScorer(self, model, encoder, decoding, decoding.num_beams if final else 1)

    # ------------------------------------------------------------------ serving

    def check_options(self, options: dict) -> None:
        d: DecodingConfig = options["decoding"]
        beams = options.get("num_beams")
        if beams is not None and not 1 <= beams <= d.max_beams:
            raise InputError(f"num_beams={beams}: allowed 1..{d.max_beams}")
        n = options.get("max_new_tokens")
        if n is not None and not 1 <= n <= d.max_new_tokens:
            raise InputError(f"max_new_tokens={n}: allowed 1..{d.max_new_tokens}")

    def parse(self, x, where: str, max_len: int, options: dict) -> Item:
        text, cut = parse_text(x, where, max_len)
        d: DecodingConfig = options["decoding"]
        return Item(
            text=text,
            cut=cut,
            options={
                "num_beams": options.get("num_beams") or d.num_beams,
                "max_new_tokens": options.get("max_new_tokens") or d.max_new_tokens,
            },
        )

    def encode(self, enc, item: Item) -> Encoding:
        ids = enc.tok.encode(item.text, add_special_tokens=False).ids
        cut = item.cut or len(ids) > enc.max_len - 1
        ids = ids[: enc.max_len - 1] + [enc.sp.eos]
        return Encoding(ids=ids, types=[0] * len(ids), truncated=cut)

    def generate(self, model, batch: dict, enc, d: DecodingConfig, options: dict) -> list[dict]:
        """Predictions for one batch of encoded sources sharing `options`."""
        from lmplatform.models.generation import generate

        out = generate(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            num_beams=options["num_beams"],
            length_penalty=d.length_penalty,
            limits=_limits(d, options["max_new_tokens"]),
        )
        texts = enc.tok.decode_batch(out.tokens)
        return [
            {"text": t, "tokens": len(toks), "truncated": cut}
            for t, toks, cut in zip(texts, out.tokens, out.truncated)
        ]


SEQ2SEQ = Seq2Seq()
