"""Model behaviour: causality, padding invariance, generation, save/load, Hugging Face parity."""

import pytest
import torch

from lmplatform.models import BertConfig, GPTConfig, LSTMConfig
from lmplatform.models.io import from_pretrained, save_pretrained, task_model_from_pretrained
from lmplatform.models.tasks import build_encoder, build_pretraining_model

V = 500


def _ids(B=3, T=24, seed=0):
    return torch.randint(5, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = build_pretraining_model(GPTConfig(size="debug", vocab_size=V)).eval()
    ids = _ids()
    base = model.logits(ids)
    for t in range(ids.shape[1] - 1):
        changed = ids.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % V  # change every token after t
        out = model.logits(changed)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]), t
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_bert_outputs_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = build_pretraining_model(BertConfig(size="debug", vocab_size=V)).eval()
    ids = _ids(T=20)
    types = torch.zeros_like(ids)
    types[:, 10:] = 1
    plain = model.bert(ids, torch.ones_like(ids), types)
    for extra in (1, 7, 30):
        padded = torch.cat([ids, torch.zeros(ids.shape[0], extra, dtype=torch.long)], 1)
        mask = torch.cat(
            [torch.ones_like(ids), torch.zeros(ids.shape[0], extra, dtype=torch.long)], 1
        )
        ptypes = torch.cat([types, torch.zeros(ids.shape[0], extra, dtype=torch.long)], 1)
        out = model.bert(padded, mask, ptypes)[:, :20]
        torch.testing.assert_close(out, plain, rtol=0, atol=1e-5)
    # and padding is really masked: without the mask the outputs change
    assert not torch.allclose(model.bert(padded, None, ptypes)[:, :20], plain, atol=1e-3)


def test_bilm_features_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = build_pretraining_model(LSTMConfig(size="debug", vocab_size=V)).eval()
    ids = _ids(T=12)
    plain = model.encode(ids, torch.ones_like(ids)).layers
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros(3, 5, dtype=torch.long)], 1)
    for a, b in zip(model.encode(padded, mask).layers, plain):
        torch.testing.assert_close(a[:, :12], b, rtol=0, atol=1e-5)


def test_generate_greedy_temperature_top_k():
    torch.manual_seed(0)
    model = build_pretraining_model(GPTConfig(size="debug", vocab_size=V)).eval()
    prompt = _ids(B=2, T=5)
    greedy = model.generate(prompt, 6)
    assert greedy.shape == (2, 11) and torch.equal(greedy[:, :5], prompt)
    assert torch.equal(greedy, model.generate(prompt, 6))  # deterministic
    step = model.logits(prompt)[:, -1].argmax(-1)
    assert torch.equal(greedy[:, 5], step)
    g = torch.Generator().manual_seed(1)
    top1 = model.generate(prompt, 6, temperature=1.0, top_k=1, generator=g)
    assert torch.equal(top1, greedy)  # top-1 sampling is greedy
    samples = {
        tuple(model.generate(prompt, 6, temperature=2.0, top_k=50, generator=g)[0].tolist())
        for _ in range(5)
    }
    assert len(samples) > 1


def test_cached_generation_equals_the_full_recompute():
    """The KV cache changes the cost, not the tokens: greedy and seeded sampling, a batch, and a
    run that slides past max_seq_len (32 here) where the window is rebuilt."""
    torch.manual_seed(0)
    model = build_pretraining_model(GPTConfig(size="debug", vocab_size=V, max_seq_len=32)).eval()
    prompt = _ids(B=3, T=9)
    for kw in ({}, {"temperature": 0.8, "top_k": 20}):
        for n in (5, 60):  # inside the window; past it (9 + 60 > 32)
            outs = []
            for use_cache in (True, False):
                g = torch.Generator().manual_seed(3)
                outs.append(model.generate(prompt, n, generator=g, use_cache=use_cache, **kw))
            assert outs[0].shape == (3, 9 + n) and torch.equal(outs[0], outs[1]), (kw, n)
    long_prompt = _ids(B=2, T=40)  # longer than the window from the start
    assert torch.equal(
        model.generate(long_prompt, 4), model.generate(long_prompt, 4, use_cache=False)
    )


@pytest.mark.parametrize(
    "cfg",
    [
        BertConfig(size="debug", vocab_size=V),
        GPTConfig(size="debug", vocab_size=V),
        LSTMConfig(size="debug", vocab_size=V),
    ],
    ids=lambda c: c.family,
)
def test_save_and_load_round_trip(tmp_path, cfg):
    torch.manual_seed(0)
    model = build_pretraining_model(cfg).eval()
    save_pretrained(model, tmp_path / "m")
    again = from_pretrained(tmp_path / "m").eval()
    ids = _ids()
    torch.testing.assert_close(
        again(ids)["loss"] if cfg.family != "bert" else again.bert(ids),
        model(ids)["loss"] if cfg.family != "bert" else model.bert(ids),
    )
    task = task_model_from_pretrained(tmp_path / "m", "classification", 3)
    enc_state = build_encoder(cfg).state_dict().keys()
    assert set(task.encoder.state_dict()) == set(enc_state)
    for k, v in task.encoder.state_dict().items():
        ref = (model.bert if cfg.family == "bert" else model).state_dict()[k]
        assert torch.equal(v, ref), k
    save_pretrained(task.eval(), tmp_path / "t", extra={"labels": ["a", "b", "c"]})
    again_task = from_pretrained(tmp_path / "t").eval()
    torch.testing.assert_close(again_task(ids)["logits"], task(ids)["logits"])


def test_save_is_atomic(tmp_path, monkeypatch):
    model = build_pretraining_model(GPTConfig(size="debug", vocab_size=V))
    save_pretrained(model, tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    import lmplatform.models.io as io

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", boom)
    with pytest.raises(OSError):
        save_pretrained(
            build_pretraining_model(GPTConfig(size="debug", vocab_size=V)), tmp_path / "m"
        )
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folder left behind


def test_fast_cpu_dropout_keeps_the_right_fraction_and_scale():
    from lmplatform.models.layers import dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = dropout(x, 0.1, True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.003  # inverted scaling keeps the expectation
    assert torch.equal(dropout(x, 0.1, False), x)
    torch.manual_seed(1)
    a = dropout(x, 0.3, True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.3, True))  # seeded like any torch op
    # no structure between neighbouring draws (they come from one 64-bit word)
    m = (a != 0).float().flatten()
    assert abs(torch.corrcoef(torch.stack([m[:-1], m[1:]]))[0, 1].item()) < 0.01


def test_fused_linear_cross_entropy_matches_the_plain_one():
    import torch.nn.functional as F

    from lmplatform.models.layers import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(300, 32, requires_grad=True)
    w = torch.randn(1000, 32, requires_grad=True)
    b = torch.randn(1000, requires_grad=True)
    t = torch.randint(0, 1000, (300,))
    t[::7] = -100
    for bias in (b, None):
        ref = F.cross_entropy(F.linear(h, w, bias), t, ignore_index=-100)
        ref_grads = torch.autograd.grad(ref, [h, w] + ([bias] if bias is not None else []))
        loss, acc = linear_cross_entropy(h, w, bias, t, chunk=64)
        grads = torch.autograd.grad(loss, [h, w] + ([bias] if bias is not None else []))
        torch.testing.assert_close(loss, ref)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
        keep = t != -100
        expected_acc = (F.linear(h, w, bias).argmax(-1)[keep] == t[keep]).float().mean()
        torch.testing.assert_close(acc, expected_acc)
