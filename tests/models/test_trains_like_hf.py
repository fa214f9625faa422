"""Our BERT trains like Hugging Face's: the speed work (fused cross-entropy over the predicted
positions only, the 16-bit dropout draws, the malloc setting) must not move
the loss. Both start from the same weights and see the same batches under bf16 autocast."""

import pytest
import torch

from lmplatform.models import BertConfig
from lmplatform.models.bert.model import BertForPretraining
from lmplatform.models.bert.pretraining import mlm_targets
from lmplatform.models.hf import hf_config, hf_state
from lmplatform.train.perf import keep_freed_memory

V, T, B, STEPS = 512, 64, 16, 150
MASK = 4


def _batch(g: torch.Generator) -> dict[str, torch.Tensor]:
    """Learnable text: 64 of the 512 words are used, and each row repeats two of them, so a
    masked word is one of the words around it; 15 % of positions are masked."""
    pair = torch.randint(5, 69, (B, 2), generator=g)
    ids = pair.gather(1, torch.randint(0, 2, (B, T), generator=g))
    sel = torch.rand(B, T, generator=g) < 0.15
    labels = torch.where(sel, ids, -100)
    types = torch.zeros_like(ids)
    types[:, T // 2 :] = 1
    return {
        "input_ids": ids.masked_fill(sel, MASK),
        "token_type_ids": types,
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (B,), generator=g),
        **mlm_targets(labels),
    }


def _hf_twin(ours: BertForPretraining):
    """transformers' BERT from our adapter's config and weights (the export's own path)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(**hf_config(ours, None, {}))
    theirs = transformers.BertForPreTraining(cfg)
    missing, unexpected = theirs.load_state_dict(
        {k: v.detach().clone() for k, v in hf_state(ours).items()}, strict=False
    )
    assert not unexpected and all("decoder" in k for k in missing), (missing, unexpected)
    theirs.tie_weights()
    return theirs


def _train(model, forward, batches) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, fused=True)
    model.train()
    losses = []
    for b in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = forward(model, b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _eval_mlm(model, forward, batches) -> float:
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return sum(forward(model, b).item() for b in batches) / len(batches)


def _ours(model, b):
    keys = ("input_ids", "token_type_ids", "mlm_positions", "mlm_labels")
    return model(**{k: b[k] for k in keys}, next_sentence_label=b["next_sentence_label"])["loss"]


def _hf(model, b):
    keys = ("input_ids", "token_type_ids", "labels", "next_sentence_label")
    return model(**{k: b[k] for k in keys}).loss


def test_bert_pretraining_loss_curve_matches_hugging_face():
    keep_freed_memory()
    g = torch.Generator().manual_seed(0)
    train = [_batch(g) for _ in range(STEPS)]
    held_out = [_batch(g) for _ in range(4)]
    torch.manual_seed(0)
    ours = BertForPretraining(BertConfig(size="debug", vocab_size=V, max_seq_len=T))
    theirs = _hf_twin(ours)
    assert _eval_mlm(ours, _ours, held_out) == pytest.approx(
        _eval_mlm(theirs, _hf, held_out), abs=0.02
    )  # the same function at the start (bf16 rounding apart)
    start = _eval_mlm(ours, _ours, held_out)
    a = _train(ours, _ours, train)
    b = _train(theirs, _hf, train)
    end_ours, end_hf = _eval_mlm(ours, _ours, held_out), _eval_mlm(theirs, _hf, held_out)
    print(f"eval loss: start {start:.3f}, after {STEPS} steps ours {end_ours:.3f} HF {end_hf:.3f}")
    print("train loss, last 10 steps:", sum(a[-10:]) / 10, sum(b[-10:]) / 10)
    assert end_ours < start - 1.0  # it learned
    assert abs(end_ours - end_hf) < 0.1 * (start - end_hf)
    assert abs(sum(a[-10:]) - sum(b[-10:])) / 10 < 0.1 * (start - end_hf)
