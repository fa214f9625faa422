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

from lmplatform.models.transformer import DecoderCache, Transformer


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
    cfg, K = model.cfg, num_beams
    B, dev = input_ids.shape[0], input_ids.device
    limit = length_limits(model, attention_mask, limits)
    memory, mask = model.encode_source(input_ids, attention_mask)
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, H): row b*K + k is beam k of b
    mask = mask.repeat_interleave(K, dim=0) if mask is not None else None
    cache = DecoderCache() if use_cache else None
    seqs = torch.full((B * K, 1), cfg.bos_token_id, dtype=torch.long, device=dev)
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one live beam at the start: the others would only duplicate it
    finished: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(B)]
    done = [False] * B

    def finish(b: int, row: int, score: float, n: int, truncated: bool) -> None:
        toks = seqs[row, 1:].tolist()
        finished[b].append((score / (n**length_penalty), toks, truncated))

    for step in range(max(limit)):
        logp = _step_logprobs(model, seqs, memory, mask, cache)  # (B*K, V)
        V = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_idx = cand.topk(2 * K, dim=1)  # 2K: K live beams even if K end in EOS
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        keep_rows, keep_toks, keep_scores = [], [], []
        for b in range(B):
            live: list[tuple[int, int, float]] = []
            if not done[b]:
                for rank, (s, i) in enumerate(zip(top_scores[b], top_idx[b])):
                    beam, tok = divmod(i, V)
                    if s == float("-inf"):
                        break
                    if tok == cfg.eos_token_id:
                        if rank < K:
                            finish(b, b * K + beam, s, step + 1, False)
                    else:
                        live.append((b * K + beam, tok, s))
                    if len(live) == K:
                        break
                if len(finished[b]) >= K:
                    done[b] = True
                elif step + 1 >= limit[b]:
                    # out of room: the open beams end here, with their new token
                    for row, tok, s in live:
                        finished[b].append(
                            (
                                s / ((step + 1) ** length_penalty),
                                seqs[row, 1:].tolist() + [tok],
                                True,
                            )
                        )
                    done[b] = True
            if done[b] or not live:
                live = [(b * K, cfg.pad_token_id, float("-inf"))] * K
            live += [live[-1][:2] + (float("-inf"),)] * (K - len(live))
            for row, tok, s in live:
                keep_rows.append(row)
                keep_toks.append(tok)
                keep_scores.append(s)
        if all(done):
            break
        index = torch.tensor(keep_rows, device=dev)
        seqs = torch.cat(
            [seqs.index_select(0, index), torch.tensor(keep_toks, device=dev)[:, None]], 1
        )
        scores = torch.tensor(keep_scores, device=dev).view(B, K)
        if cache is not None:
            cache.reorder(index)
    tokens, truncated = [], []
    for hyps in finished:
        _, toks, cut = max(hyps, key=lambda h: h[0])
        tokens.append(toks)
        truncated.append(cut)
    return Generated(tokens=tokens, truncated=truncated)


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
