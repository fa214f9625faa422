"""Model behaviour: causality, padding invariance, generation, save/load, Hugging Face parity."""

import pytest
import torch

from lmplatform.models import BertConfig, ElectraConfig, GPTConfig, LSTMConfig
from lmplatform.models.gpt.model import Sampling
from lmplatform.models.io import from_pretrained, save_pretrained, task_model_from_pretrained
from lmplatform.models.tasks import build_encoder, build_pretraining_model, encoder_of

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
    # nucleus sampling: a tiny top_p keeps only the most likely token
    assert torch.equal(model.generate(prompt, 6, temperature=1.0, top_p=1e-6, generator=g), greedy)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])  # softmax 0.64, 0.24, 0.09, 0.03
    kept = {int(Sampling(1.0, top_p=0.8).pick(logits, g)) for _ in range(200)}
    assert kept == {0, 1}  # 0.64 < 0.8 <= 0.64 + 0.24: the two most likely
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
        ElectraConfig(size="debug", vocab_size=V, embedding_size=32),
    ],
    ids=lambda c: c.family,
)
def test_save_and_load_round_trip(tmp_path, cfg):
    torch.manual_seed(0)
    model = build_pretraining_model(cfg).eval()
    save_pretrained(model, tmp_path / "m")
    again = from_pretrained(tmp_path / "m").eval()
    ids = _ids()
    # BERT and ELECTRA: the encoder (ELECTRA's generator is not saved: it starts anew)
    encoders = ("bert", "electra")
    torch.testing.assert_close(
        again(ids)["loss"] if cfg.family not in encoders else encoder_of(again)(ids),
        model(ids)["loss"] if cfg.family not in encoders else encoder_of(model)(ids),
    )
    task = task_model_from_pretrained(tmp_path / "m", "classification", 3)
    enc_state = build_encoder(cfg).state_dict().keys()
    assert set(task.encoder.state_dict()) == set(enc_state)
    for k, v in task.encoder.state_dict().items():
        if cfg.family == "electra" and k.startswith("pooler."):
            continue  # the sequence classifier's dense layer: new for every task, as in transformers
        ref = encoder_of(model).state_dict()[k]
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
    half = dropout(x.bfloat16(), 0.1, True)
    assert half.dtype == torch.bfloat16 and abs(half.float().mean().item() - 1.0) < 0.003
    assert torch.equal(dropout(x, 0.1, False), x)
    torch.manual_seed(1)
    a = dropout(x, 0.3, True)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.3, True))  # seeded like any torch op
    # no structure between neighbouring draws (they come from one 64-bit word)
    m = (a != 0).float().flatten()
    assert abs(torch.corrcoef(torch.stack([m[:-1], m[1:]]))[0, 1].item()) < 0.01


# fp32 keeps 24 bits (2^-24 ~ 6e-8): a mean over 300 rows of log-sum-exps over 1,000 logits,
# summed in another order and by chunks, lands within a few hundred units of rounding; 1e-5 is
# ~170 of them, while an ignored row counted, a row lost or a wrong share is off by ~1/300.
RTOL, ATOL = 1e-5, 1e-6


def _ignored(kind: str) -> torch.Tensor:
    t = torch.randint(0, 1000, (300,), generator=torch.Generator().manual_seed(1))
    if kind == "some":
        t[::7] = -100
        t[64:128] = -100  # a whole chunk of 64
    elif kind == "all":
        t[:] = -100
    return t


@pytest.mark.parametrize(
    "chunk", [64, 300, None, "blocks"], ids=["uneven-64", "one-chunk", "device", "blocks"]
)
@pytest.mark.parametrize("ignored", ["none", "some", "all"])
def test_fused_linear_cross_entropy_matches_the_plain_one(chunk, ignored, monkeypatch):
    """Loss, accuracy and every gradient equal F.cross_entropy(ignore_index=-100) of the full
    logits, whatever the chunking (a ragged last chunk, one chunk, the device's default, and
    gradients taken in blocks of two chunks, summed in fp32, as an accelerator's are) and
    however many rows are ignored (all of them: 0, as a mean over no rows should not be NaN)."""
    import torch.nn.functional as F

    from lmplatform.models import layers
    from lmplatform.models.layers import linear_cross_entropy

    if chunk == "blocks":  # 64-row chunks, gradients every 128 rows: blocks of 128, 128, 44
        monkeypatch.setattr(layers, "CHUNK_LOGITS", 128 * 1000)
        chunk = 64

    torch.manual_seed(0)
    h = torch.randn(300, 32, requires_grad=True)
    w = torch.randn(1000, 32, requires_grad=True)
    b = torch.randn(1000, requires_grad=True)
    t = _ignored(ignored)
    for bias in (b, None):
        params = [h, w] + ([bias] if bias is not None else [])
        loss, acc = linear_cross_entropy(h, w, bias, t, chunk=chunk)
        grads = torch.autograd.grad(loss, params)
        logits = F.linear(h, w, bias)
        keep = t != -100
        if ignored == "all":
            assert loss.item() == 0.0 and acc.item() == 0.0
            assert all(not g.any() for g in grads)
            continue
        ref = F.cross_entropy(logits, t, ignore_index=-100)
        torch.testing.assert_close(loss, ref, rtol=RTOL, atol=ATOL)
        for g, r in zip(grads, torch.autograd.grad(ref, params)):
            torch.testing.assert_close(g, r, rtol=RTOL, atol=ATOL)
        expected_acc = (logits.argmax(-1)[keep] == t[keep]).float().mean()
        torch.testing.assert_close(acc, expected_acc)


def test_fused_cross_entropy_takes_few_chunks_on_an_accelerator():
    """GPT-base's micro-batch of 32 x 1023 rows over 50,257 words: 256-row chunks made 128 of
    them, each re-reading the (V, C) weight; the budget makes 13, none past it. CPU keeps the
    cache-sized 256 rows it was measured fastest with."""
    from lmplatform.models.layers import CHUNK_LOGITS, chunk_rows

    rows, vocab = 32 * 1023, 50257
    per = chunk_rows(rows, vocab, "cuda")
    assert per * vocab <= CHUNK_LOGITS and -(-rows // per) == 13
    assert chunk_rows(600, 8000, "cuda") == 600  # fits: one chunk
    assert chunk_rows(rows, vocab, "cpu") == 256


class _DeviceReads:
    """Counts the aten calls that read a device value back to the host (`bool`, `.item()`, a
    boolean-mask index): each makes a GPU drain its queue. On CPU they still dispatch."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        syncing = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}
        seen = self.seen = []

        class Reads(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func in syncing:
                    seen.append(func)
                return func(*args, **(kwargs or {}))

        self._mode = Reads()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def test_the_causal_lm_loss_reads_nothing_back_from_the_device():
    """GPT's forward and backward, through the fused cross-entropy with ignored targets, make
    no host read of a device value."""
    model = build_pretraining_model(GPTConfig(size="debug", vocab_size=V))
    ids = _ids()
    labels = ids.clone()
    labels[:, :5] = -100
    with _DeviceReads() as reads:
        model(ids, labels=labels)["loss"].backward()
    assert reads.seen == []


def _bert_batch(nsp: list[int], lengths=(30, 17, 24, 9)):
    from lmplatform.models.bert.pretraining import BertCollator

    collate = BertCollator(pad_id=0, mask_id=4, special_ids=[0, 1, 2, 3, 4], vocab_size=V, seed=3)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, V, (n,), generator=g).tolist() for n in lengths]
    return collate(
        {
            "input_ids": rows,
            "token_type_ids": [[0] * len(r) for r in rows],
            "next_sentence_label": nsp,
        }
    )


def test_bert_pretraining_reads_nothing_back_from_the_device_and_matches_the_plain_loss():
    """The collator's `mlm_positions` / `mlm_labels` (padded with -100) pick the masked tokens
    by a gather, and NSP pairs without a label weigh nothing: forward and backward make no host
    read, and the losses equal the boolean-mask pick and `F.cross_entropy(ignore_index=-100)`.
    A batch with no NSP label (`nsp: false`) reports no NSP metric."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_pretraining_model(BertConfig(size="debug", vocab_size=V, dropout=0.0))
    full = _bert_batch([1, 0, -100, 1], lengths=(32,) * 4)  # no padding: no attention mask
    assert "attention_mask" not in full
    with _DeviceReads() as reads:
        model(**full)["loss"].backward()
    assert reads.seen == []
    batch = _bert_batch([1, 0, -100, 1])
    n = int((batch["labels"] != -100).sum())
    assert batch["mlm_positions"].numel() % 64 == 0 and n < batch["mlm_positions"].numel()
    model.eval()  # no attention dropout: the two picks see the same activations
    out = model(**batch)
    plain = model(**{k: v for k, v in batch.items() if not k.startswith("mlm_")})
    torch.testing.assert_close(out["mlm_loss"], plain["mlm_loss"])
    assert int(out["predicted_tokens"]) == n
    h = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    nsp = F.cross_entropy(model.nsp(model.bert.pool(h)), batch["next_sentence_label"])
    torch.testing.assert_close(out["nsp_loss"], nsp.detach())
    torch.testing.assert_close(out["loss"], (out["mlm_loss"] + nsp).detach(), rtol=1e-5, atol=1e-6)
    no_pairs = _bert_batch([-100] * 4)
    assert "next_sentence_label" not in no_pairs
    assert "nsp_loss" not in model(**no_pairs) and "nsp_acc" not in model(**no_pairs)


def test_electra_pretraining_corrupts_only_masked_tokens_and_reads_nothing_back():
    """Replaced-token detection: the discriminator sees the generator's samples exactly at the
    masked positions (padding of the position list writes nothing), forward + backward make no
    host read, and the loss is the generator's + discriminator_weight x the discriminator's."""
    torch.manual_seed(0)
    cfg = ElectraConfig(size="debug", vocab_size=V, embedding_size=32)
    model = build_pretraining_model(cfg)
    full = _bert_batch([-100] * 4, lengths=(32,) * 4)  # a CPU attention mask is looked at
    with _DeviceReads() as reads:
        out = model(**full)
        out["loss"].backward()
    assert reads.seen == []
    batch = _bert_batch([-100] * 4)
    torch.testing.assert_close(
        out["loss"].detach(), out["mlm_loss"] + 50.0 * out["rtd_loss"], rtol=1e-5, atol=1e-5
    )
    positions, labels = batch["mlm_positions"], batch["mlm_labels"]
    sampled = torch.randint(5, V, positions.shape)
    corrupted = model._corrupt(batch["input_ids"], positions, labels, sampled).flatten()
    changed = (corrupted != batch["input_ids"].flatten()).nonzero().flatten().tolist()
    real = positions[labels != -100]
    assert set(changed) <= set(real.tolist())
    assert torch.equal(corrupted[real], sampled[labels != -100])


def test_electra_samples_follow_the_generator_and_a_correct_sample_is_not_a_replacement(
    monkeypatch,
):
    """Gumbel-max draws tokens as often as softmax says; a generator that samples the original
    token replaces nothing, however the batch arrives (with the unmasked tokens, or only the
    masked ones and their targets, from which the model rebuilds the original)."""
    import lmplatform.models.electra.model as electra

    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(40_000, 4)
    freq = torch.bincount(electra._sample(logits), minlength=4) / 40_000
    # binomial sd <= 0.0025 at n=40,000: 0.015 is six of them
    torch.testing.assert_close(freq, logits[0].softmax(-1), atol=0.015, rtol=0)

    model = build_pretraining_model(ElectraConfig(size="debug", vocab_size=V))
    batch = _bert_batch([-100] * 4)
    targets = batch["mlm_labels"]
    monkeypatch.setattr(electra, "_sample", lambda chunk: targets[: len(chunk)].clamp(min=0))
    for given in (batch, {k: v for k, v in batch.items() if k not in ("original_ids", "labels")}):
        out = model(**given)
        assert float(out["replaced"]) == 0.0 and float(out["rtd_loss"]) > 0.0


def test_electra_discriminator_learns_where_the_replacements_are(sample_dir, tmp_path, monkeypatch):
    """The discriminator's labels line up with the corruptions: with replacements drawn
    uniformly (easy to spot, unlike a trained generator's, which a debug model cannot tell
    from the original within minutes: see docs/pretraining.md) its held-out loss falls well
    below the entropy of the replaced fraction, which is all a model learns from labels that
    do not match its input."""
    import math

    import lmplatform.models.electra.model as electra
    from lmplatform.models.families import objective_of
    from lmplatform.models.objective import ExamplesConfig
    from lmplatform.pretraining.data import batch_iterator, build_examples_local
    from lmplatform.tokenization import TokenizerConfig, train_tokenizer

    monkeypatch.setattr(
        electra, "_sample", lambda logits: torch.randint(5, logits.shape[-1], logits.shape[:-1])
    )
    lines = (sample_dir / "corpus" / "train.txt").read_text().split("\n\n")[:600]
    tok = train_tokenizer(TokenizerConfig(kind="wordpiece", vocab_size=1000), [lines], tmp_path)
    examples = ExamplesConfig(max_seq_len=64, nsp=False)
    rows = build_examples_local(lines, "electra", tok.read_text(), examples)
    collate = objective_of("electra").collator(tok.read_text(), examples, 0)
    torch.manual_seed(0)
    model = build_pretraining_model(ElectraConfig(size="debug", vocab_size=1000, max_seq_len=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = batch_iterator(rows, 16, collate, seed=0)
    for _ in range(300):
        model(**next(batches))["loss"].backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        held = [model(**next(batches)) for _ in range(8)]
    loss = sum(float(o["rtd_loss"]) for o in held) / 8
    p = sum(float(o["replaced"]) for o in held) / 8
    prior = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    print(f"replaced-token loss {loss:.3f}, entropy of the replaced fraction {prior:.3f}")
    assert loss < 0.85 * prior, (loss, prior)


def test_layer_decay_depths_put_electras_classifier_dense_with_the_head():
    """BERT's pooler is pretrained and sits on the top layer (depth L); ELECTRA's `pooler` is
    the sequence classifier's dense layer, fresh with the head (L + 1); embeddings and their
    projection are at 0."""
    bert = build_encoder(BertConfig(size="debug", vocab_size=V))
    electra = build_encoder(ElectraConfig(size="debug", vocab_size=V, embedding_size=32))
    top = bert.cfg.num_layers
    assert bert.layer_depth("pooler.weight") == top
    assert electra.layer_depth("pooler.weight") == top + 1
    assert electra.layer_depth("emb_proj.weight") == electra.layer_depth("tok_emb.weight") == 0
    assert electra.layer_depth("layers.1.attn.qkv.weight") == bert.layer_depth("layers.1.x") == 2


def _mlm_labels(ids):
    labels = torch.full_like(ids, -100)
    labels[:, 3::5] = ids[:, 3::5]
    return labels


@pytest.mark.parametrize("family", ["bert", "electra", "gpt", "lstm", "transformer"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(family):
    """Recomputed activations (dropout on: the recompute must draw the same masks) give the
    plain run's loss and gradients, for every family's layer stacks; only memory changes."""
    from lmplatform.models.layers import set_activation_checkpointing
    from lmplatform.models.transformer.model import Transformer, TransformerConfig

    ids = _ids(B=4, T=32, seed=1)
    cfgs = {
        "bert": BertConfig(size="debug", vocab_size=V, dropout=0.2),
        "electra": ElectraConfig(size="debug", vocab_size=V, dropout=0.2),
        "gpt": GPTConfig(size="debug", vocab_size=V, dropout=0.2),
        "lstm": LSTMConfig(size="debug", vocab_size=V, dropout=0.2),
    }
    batch = {"input_ids": ids}
    if family in ("bert", "electra"):
        batch["labels"] = _mlm_labels(ids)
    if family == "transformer":
        batch["labels"] = _ids(B=4, T=20, seed=2)

    def run(checkpointing: bool):
        torch.manual_seed(0)
        if family == "transformer":
            model = Transformer(TransformerConfig(size="debug", vocab_size=V, dropout=0.2))
        else:
            model = build_pretraining_model(cfgs[family])
        assert set_activation_checkpointing(model, checkpointing) >= 1
        model.train()
        torch.manual_seed(1)  # dropout and ELECTRA's samples: the same draws in both runs
        kept = []  # bytes of every tensor the forward keeps for the backward
        pack = lambda t: kept.append(t.numel() * t.element_size()) or t  # noqa: E731
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(**batch)["loss"]
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, sum(kept)

    (plain, grads, kept), (ckpt, ckpt_grads, ckpt_kept) = run(False), run(True)
    assert ckpt_kept < 0.8 * kept, (ckpt_kept, kept)  # checkpointing really happened
    assert torch.equal(plain, ckpt)
    assert grads.keys() == ckpt_grads.keys() and len(grads) > 4
    for n, g in grads.items():
        # the same ops on the same values: equal up to the order a backward sums in
        torch.testing.assert_close(ckpt_grads[n], g, rtol=1e-5, atol=1e-7, msg=n)
