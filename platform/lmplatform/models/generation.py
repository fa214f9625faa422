"""Decoding for the encoder-decoder: greedy and batched beam search, both incremental.

The source is encoded once; each step feeds only the newest target token through the decoder,
whose layers keep their keys and values (`DecoderCache`; `use_cache=False` re-runs the whole
prefix instead, which tests use as the reference). Every row stops at EOS or at its length
limit: `max_new_tokens`, and a guard relative to its source (`length_ratio` x source tokens +
`length_offset`) so that a model that never says EOS cannot run to the model's maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmplatform.models.transformer.model import DecoderCache, Transformer


@dataclass
class Generated:
    tokens: list[list[int]]
    """Output ids per row, without the start token and EOS."""
    truncated: list[bool]
    """The row stopped at its length limit, not at EOS."""


@dataclass(frozen=True)
class DecodeLimits:
    max_new_tokens: int = 64
    length_ratio: float = 2.0
    length_offset: int = 10


def length_limits(
    model: Transformer, attention_mask: torch.Tensor, limits: DecodeLimits
) -> list[int]:
    """Most tokens each row may generate (EOS included)."""
    src = attention_mask.sum(dim=1).tolist()
    room = model.cfg.max_seq_len - 1  # the start token takes one position
    return [
        max(
            1,
            min(
                limits.max_new_tokens,
                room,
                math.ceil(limits.length_ratio * n) + limits.length_offset,
            ),
        )
        for n in src
    ]


def _step_logprobs(
    model: Transformer, seqs: torch.Tensor, memory, mask, cache: DecoderCache | None
) -> torch.Tensor:
    """Log-probabilities of the next token for every row (R, V) in float32."""
    if cache is not None:
        h = model.decode(seqs[:, -1:], memory, mask, cache)
    else:
        h = model.decode(seqs, memory, mask)
    logp = torch.log_softmax(model.logits(h[:, -1]).float(), dim=-1)
    # the start and padding tokens are never outputs
    logp[:, model.cfg.bos_token_id] = float("-inf")
    if model.cfg.pad_token_id != model.cfg.eos_token_id:
        logp[:, model.cfg.pad_token_id] = float("-inf")
    return logp


@torch.no_grad()
def greedy(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    limits: DecodeLimits = DecodeLimits(),
    use_cache: bool = True,
) -> Generated:
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    cfg = model.cfg
    B = input_ids.shape[0]
    limit = length_limits(model, attention_mask, limits)
    memory, mask = model.encode_source(input_ids, attention_mask)
    cache = DecoderCache() if use_cache else None
    seqs = torch.full((B, 1), cfg.bos_token_id, dtype=torch.long, device=input_ids.device)
    out: list[list[int]] = [[] for _ in range(B)]
    ended = [False] * B
    stopped = [False] * B
    for step in range(max(limit)):
        nxt = _step_logprobs(model, seqs, memory, mask, cache).argmax(-1)  # (B,)
        for b, tok in enumerate(nxt.tolist()):
            if stopped[b]:
                continue
            if tok == cfg.eos_token_id:
                ended[b] = stopped[b] = True
            else:
                out[b].append(tok)
                stopped[b] = step + 1 >= limit[b]
        if all(stopped):
            break
        # finished rows keep decoding padding (cheaper than shrinking the batch and its cache)
        nxt = nxt.masked_fill(torch.tensor(stopped, device=nxt.device), cfg.pad_token_id)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
    return Generated(tokens=out, truncated=[not e for e in ended])


Hypothesis = tuple[float, list[int], bool]
"""A finished hypothesis: its score, its tokens (no start token, no EOS), and whether it was cut
at the length limit."""


@dataclass
class _Beams:
    """Every row's K beams and its finished hypotheses. Row b*K + k of `seqs` (and of the decoder
    cache) is beam k of source row b."""

    seqs: torch.Tensor  # (B*K, T): the start token, then the tokens so far
    scores: torch.Tensor  # (B, K): summed log-probabilities, -inf for a beam that is not live
    cache: DecoderCache | None
    K: int
    length_penalty: float
    eos: int
    pad: int
    finished: list[list[Hypothesis]]
    done: list[bool]

    @classmethod
    def start(cls, cfg, B: int, K: int, length_penalty: float, use_cache: bool, device) -> _Beams:
        seqs = torch.full((B * K, 1), cfg.bos_token_id, dtype=torch.long, device=device)
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one live beam at the start: the others would only duplicate it
        cache = DecoderCache() if use_cache else None
        finished: list[list[Hypothesis]] = [[] for _ in range(B)]
        eos, pad = cfg.eos_token_id, cfg.pad_token_id
        return cls(seqs, scores, cache, K, length_penalty, eos, pad, finished, [False] * B)

    def choose(self, logp: torch.Tensor, n: int, limit: list[int]) -> list[tuple[int, int, float]]:
        """Extend every beam by the `n`th token: finish the hypotheses that end here, and return
        the (row, token, score) of the K beams each row keeps (B*K in all; a done row's are
        padding at -inf)."""
        B, K, V = len(self.done), self.K, logp.shape[-1]
        cand = (self.scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_idx = cand.topk(2 * K, dim=1)  # 2K: K live beams even if K end in EOS
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        kept: list[tuple[int, int, float]] = []
        for b in range(B):
            live: list[tuple[int, int, float]] = []
            if not self.done[b]:
                live = self._live(b, top_scores[b], top_idx[b], V, n)
                self._close_if_complete(b, live, n, limit[b])
            if self.done[b] or not live:
                live = [(b * K, self.pad, float("-inf"))] * K
            kept += live + [live[-1][:2] + (float("-inf"),)] * (K - len(live))
        return kept

    def _live(self, b: int, scores: list[float], idx: list[int], V: int, n: int):
        """Row b's candidates, best first: up to K that go on; those ending in EOS among the top
        K are finished."""
        K = self.K
        live: list[tuple[int, int, float]] = []
        for rank, (s, i) in enumerate(zip(scores, idx)):
            beam, tok = divmod(i, V)
            if s == float("-inf"):
                break
            if tok == self.eos:
                if rank < K:
                    self._finish(b, self.seqs[b * K + beam, 1:].tolist(), s, n, False)
            else:
                live.append((b * K + beam, tok, s))
            if len(live) == K:
                break
        return live

    def _close_if_complete(self, b: int, live: list, n: int, limit: int) -> None:
        if len(self.finished[b]) >= self.K:
            self.done[b] = True
        elif n >= limit:
            # out of room: the open beams end here, with their new token
            for row, tok, s in live:
                self._finish(b, self.seqs[row, 1:].tolist() + [tok], s, n, True)
            self.done[b] = True

    def _finish(self, b: int, toks: list[int], score: float, n: int, truncated: bool) -> None:
        self.finished[b].append((score / (n**self.length_penalty), toks, truncated))

    def advance(self, kept: list[tuple[int, int, float]]) -> None:
        """Continue from the kept beams (rows reordered, the decoder cache with them)."""
        dev = self.seqs.device
        index = torch.tensor([row for row, _, _ in kept], device=dev)
        toks = torch.tensor([tok for _, tok, _ in kept], device=dev)
        self.seqs = torch.cat([self.seqs.index_select(0, index), toks[:, None]], 1)
        self.scores = torch.tensor([s for _, _, s in kept], device=dev).view(-1, self.K)
        if self.cache is not None:
            self.cache.reorder(index)

    def best(self) -> Generated:
        tokens, truncated = [], []
        for hyps in self.finished:
            _, toks, cut = max(hyps, key=lambda h: h[0])
            tokens.append(toks)
            truncated.append(cut)
        return Generated(tokens=tokens, truncated=truncated)


@torch.no_grad()
def beam_search(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    limits: DecodeLimits = DecodeLimits(),
    use_cache: bool = True,
) -> Generated:
    """Batched beam search: all rows' beams advance together. A hypothesis ending in EOS among
    a row's top `num_beams` candidates is finished, scored by log-probability / length **
    `length_penalty` (0: no normalisation; above 0 favours longer outputs); a row is done when
    it has `num_beams` finished ones, or at its length limit (its open beams then finish,
    truncated). The best finished hypothesis per row is returned. `num_beams=1` is greedy."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    K, B = num_beams, input_ids.shape[0]
    limit = length_limits(model, attention_mask, limits)
    memory, mask = model.encode_source(input_ids, attention_mask)
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, H): row b*K + k is beam k of b
    mask = mask.repeat_interleave(K, dim=0) if mask is not None else None
    beams = _Beams.start(model.cfg, B, K, length_penalty, use_cache, input_ids.device)
    for step in range(max(limit)):
        logp = _step_logprobs(model, beams.seqs, memory, mask, beams.cache)  # (B*K, V)
        kept = beams.choose(logp, step + 1, limit)
        if all(beams.done):
            break
        beams.advance(kept)
    return beams.best()


def generate(
    model: Transformer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    limits: DecodeLimits = DecodeLimits(),
) -> Generated:
    """Greedy for one beam, beam search otherwise."""
    if num_beams <= 1:
        return greedy(model, input_ids, attention_mask, limits)
    return beam_search(model, input_ids, attention_mask, num_beams, length_penalty, limits)
