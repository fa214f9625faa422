"""Translation: the encoder-decoder, its decoding, parallel data, the seq2seq task type through
search, promotion, serving (HTTP contract and 422s) and export to transformers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import requests
import torch

from lmplatform.models.generation import DecodeLimits, beam_search, greedy
from lmplatform.models.transformer.model import DecoderCache, Transformer, TransformerConfig
from serving_fixtures import local_server


def _model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(size="debug", vocab_size=60, dropout=0.0, **kw)
    return Transformer(cfg).eval()


def _sources(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (6, 11), generator=g)
    mask = torch.ones_like(ids)
    for row, n in ((1, 7), (3, 4), (4, 1)):  # right-padded rows of several lengths
        mask[row, n:] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("pre_ln", [False, True])
def test_cached_decoding_equals_uncached_and_one_beam_equals_greedy(pre_ln):
    model = _model(pre_ln=pre_ln)
    ids, mask = _sources()
    # a step of the cache gives the logits of the whole-prefix pass
    memory, mem_mask = model.encode_source(ids, mask)
    target = torch.randint(3, 60, (6, 9))
    with torch.no_grad():
        full = model.logits(model.decode(target, memory, mem_mask))
        cache = DecoderCache()
        steps = [
            model.logits(model.decode(target[:, i : i + 1], memory, mem_mask, cache))
            for i in range(9)
        ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)

    limits = DecodeLimits(max_new_tokens=14)
    g = greedy(model, ids, mask, limits)
    assert g.tokens == greedy(model, ids, mask, limits, use_cache=False).tokens
    assert all(len(t) <= 14 for t in g.tokens) and any(len(t) > 0 for t in g.tokens)
    b1 = beam_search(model, ids, mask, num_beams=1, limits=limits)
    assert (b1.tokens, b1.truncated) == (g.tokens, g.truncated)
    b4 = beam_search(model, ids, mask, num_beams=4, limits=limits)
    assert b4.tokens == beam_search(model, ids, mask, 4, limits=limits, use_cache=False).tokens
    # beam search keeps the greedy path among its hypotheses: it never scores worse
    assert (
        _score(model, ids, mask, b4.tokens, b4.truncated)
        >= _score(model, ids, mask, g.tokens, g.truncated) - 1e-4
    )


def _score(model, ids, mask, tokens, truncated) -> float:
    """Summed length-normalised log-probability of the outputs (as beam search ranks them)."""
    total = 0.0
    eos = model.cfg.eos_token_id
    with torch.no_grad():
        for i, (toks, cut) in enumerate(zip(tokens, truncated)):
            seq = toks + ([] if cut else [eos])
            memory, mm = model.encode_source(ids[i : i + 1, : int(mask[i].sum())])
            inp = torch.tensor([[model.cfg.bos_token_id] + seq[:-1]])
            logp = torch.log_softmax(model.logits(model.decode(inp, memory, mm)).float(), -1)
            total += float(logp[0, torch.arange(len(seq)), torch.tensor(seq)].sum()) / len(seq)
    return total


def test_outputs_stop_at_the_length_guard_relative_to_the_source():
    model = _model()
    with torch.no_grad():
        model.final_logits_bias[model.cfg.eos_token_id] = -1e4  # a model that never ends
    ids, mask = _sources()
    limits = DecodeLimits(max_new_tokens=100, length_ratio=1.5, length_offset=2)
    for out in (greedy(model, ids, mask, limits), beam_search(model, ids, mask, 3, limits=limits)):
        want = [int(1.5 * n + 0.999) + 2 for n in mask.sum(1).tolist()]
        assert [len(t) for t in out.tokens] == want
        assert all(out.truncated)
    short = greedy(model, ids, mask, DecodeLimits(max_new_tokens=5))
    assert [len(t) for t in short.tokens] == [5] * 6


# --------------------------------------------------------------------------- data


def test_parallel_files_report_bad_pairs_and_refuse_misaligned_files(tmp_path):
    from lmplatform.data.sources import DataError, DataSource
    from lmplatform.tasks.data import load_labelled

    src = ["Ein Hund läuft .", "", "Zwei Männer .", "Ja .", "Eine Frau singt ."]
    tgt = ["A dog runs .", "Nothing on this side .", "Two men .", "Yes .", "x" * 80]
    (tmp_path / "a.de").write_text("\n".join(src) + "\n")
    (tmp_path / "a.en").write_text("\n".join(tgt) + "\n")
    source = DataSource(path=str(tmp_path / "a.de"), target_path=str(tmp_path / "a.en"))
    data = load_labelled(source, "seq2seq", None, max_bad_fraction=0.5)
    rows = data.dataset.to_list()
    assert [r["source"] for r in rows] == ["Ein Hund läuft .", "Zwei Männer .", "Ja ."]
    assert rows[0]["target"] == "A dog runs ."
    assert data.report.bad == 2
    assert set(data.report.reasons) == {"empty source side", "length ratio outlier"}
    with pytest.raises(DataError, match="2 of 5 rows"):
        load_labelled(source, "seq2seq", None, max_bad_fraction=0.1)

    (tmp_path / "b.en").write_text("\n".join(tgt[:4]) + "\n")
    bad = DataSource(path=str(tmp_path / "a.de"), target_path=str(tmp_path / "b.en"))
    with pytest.raises(DataError, match=r"misaligned: .*a\.de has 5 lines but .*b\.en has 4"):
        load_labelled(bad, "seq2seq")

    # one TSV of pairs works the same
    (tmp_path / "p.tsv").write_text("de\ten\nEin Hund .\tA dog .\nEine Katze .\t\n")
    tsv = DataSource(path=str(tmp_path / "p.tsv"), text_column="de", target_column="en")
    data = load_labelled(tsv, "seq2seq", None, max_bad_fraction=0.5)
    assert data.dataset.to_list() == [{"source": "Ein Hund .", "target": "A dog ."}]
    assert set(data.report.reasons) == {"empty target side"}


def test_seq2seq_config_errors_name_the_problem(tmp_path):
    from lmplatform.config import ConfigError, load_config
    from lmplatform.pretraining.config import PretrainJobConfig
    from lmplatform.tune.config import FinetuneJobConfig

    cfg = tmp_path / "mt.yaml"
    cfg.write_text(
        "name: mt\n"
        "task: {name: mt, type: seq2seq, train: {path: a.de, target_path: a.en}, "
        "dev: {path: b.de, target_path: b.en}}\n"
    )
    job = load_config(FinetuneJobConfig, cfg, [])
    assert job.model.family == "transformer" and job.tokenizer.kind == "joint_bpe"
    assert job.task.metric == "bleu" and job.task.decoding.num_beams == 4
    for override, message in [
        ("parent=random:tiny-bert", "random weights; a seq2seq model without pretrained"),
        ("warm_start=encoder", "warm_start needs `parent`"),
        ("transfer=frozen", "has no head and trains in full"),
        ('task.labels=["a"]', "seq2seq tasks have no labels"),
        ("tokenizer.kind=wordpiece", "needs 'joint_bpe'"),
        ("task.metric=accuracy", "does not score seq2seq tasks"),
        ("task.decoding.num_beams=0", "num_beams"),
        ("task.max_seq_len=1024", "exceeds model.max_seq_len"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(FinetuneJobConfig, cfg, [override])
    with pytest.raises(ConfigError, match="takes its architecture and tokenizer from `parent`"):
        load_config(FinetuneJobConfig, cfg, ["parent=tiny-bert", "model.size=debug"])
    cls = tmp_path / "cls.yaml"
    cls.write_text(
        "name: c\nparent: tiny-bert\n"
        "task: {name: c, type: classification, train: {path: a.tsv}, dev: {path: a.tsv}, "
        "decoding: {num_beams: 2}}\n"
    )
    with pytest.raises(ConfigError, match="`decoding` is for seq2seq tasks"):
        load_config(FinetuneJobConfig, cls, [])
    pre = tmp_path / "pre.yaml"
    pre.write_text(
        "name: p\ncorpus: {source: {path: c.txt}}\ntokenizer: {kind: joint_bpe}\n"
        "model: {family: transformer, size: debug}\n"
    )
    with pytest.raises(ConfigError, match="encoder-decoder: it trains on parallel text"):
        load_config(PretrainJobConfig, pre, [])


# --------------------------------------------------------------------------- end to end

# A toy language: each word has one translation and the order is reversed, so the model must
# learn a lexicon and to read its source back to front (cross-attention, not copying).
LEXICON = dict(
    zip(
        "ka mo ti lu ne sa po ri fe go da vi".split(),
        "red blue cat dog sun sea tree hill run sit eat see".split(),
    )
)


def _toy_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        words = [rng.choice(list(LEXICON)) for _ in range(rng.randint(2, 6))]
        out.append((" ".join(words), " ".join(LEXICON[w] for w in reversed(words))))
    return out


def _write_pairs(folder: Path, split: str, pairs) -> dict:
    (folder / f"{split}.src").write_text("".join(s + "\n" for s, _ in pairs))
    (folder / f"{split}.tgt").write_text("".join(t + "\n" for _, t in pairs))
    return {"path": str(folder / f"{split}.src"), "target_path": str(folder / f"{split}.tgt")}


@pytest.fixture(scope="module")
def toy_translator(ray_local, tmp_path_factory):
    """A debug encoder-decoder searched, trained and promoted on the toy language."""
    from lmplatform.config import load_config
    from lmplatform.tune.config import FinetuneJobConfig
    from lmplatform.tune.promotion import promote
    from lmplatform.tune.search import run_search

    root = tmp_path_factory.mktemp("toy")
    rng = random.Random(0)
    train = _write_pairs(root, "train", _toy_pairs(3000, rng))
    dev = _write_pairs(root, "dev", _toy_pairs(150, rng))
    cfg = root / "toy.yaml"
    import yaml

    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "toy-mt",
                "output_dir": str(root / "runs"),
                "registry": str(root / "registry"),
                "task": {
                    "name": "toy-mt",
                    "type": "seq2seq",
                    "train": train,
                    "dev": dev,
                    "max_seq_len": 32,
                },
                "model": {"size": "debug", "max_seq_len": 64, "dropout": 0.0},
                "tokenizer": {"kind": "joint_bpe", "vocab_size": 300},
                # ~750 steps: token accuracy reaches 1.0 after ~600 (debug model, 2 CPU cores)
                "train": {
                    "lr": 1e-3,
                    "batch_size": 32,
                    "epochs": 8,
                    "warmup_ratio": 0.05,
                    "eval_every": 250,
                    "log_every": 100,
                },
                "search": {
                    "num_samples": 1,
                    "scheduler": "fifo",
                    "space": {"label_smoothing": {"kind": "choice", "values": [0.0]}},
                },
            }
        )
    )
    job = load_config(FinetuneJobConfig, cfg, [])
    sr = run_search(job, verbose=0)
    return sr, promote(sr)


def test_a_toy_language_is_learnt_to_bleu_90_promoted_and_served(toy_translator, tmp_path):
    from lmplatform.registry.store import Registry
    from lmplatform.serving.predictors import ModelInfo, TaskPredictor

    sr, out = toy_translator
    assert out["metric"] == "bleu" and out["value"] >= 90, (out, sr.table)
    reg = Registry(sr.job.registry)
    meta = reg.metadata("tasks", "toy-mt", out["version"])
    assert meta["dev"]["chrf"] > 90 and meta["decoding"]["num_beams"] == 4
    folder = reg.local_path("tasks", "toy-mt", out["version"])
    predictor = TaskPredictor(folder, ModelInfo(name="toy-mt", version=out["version"]))
    predictor.smoke()

    with local_server({"toy-mt": predictor}) as url:
        tasks = requests.get(f"{url}/v1/tasks", timeout=10).json()["tasks"]
        assert [(t["task"], t["type"]) for t in tasks] == [("toy-mt", "seq2seq")]
        # sentences of our own, beam 4 and greedy in one request each
        body = {"inputs": ["ka mo ti", "sa fe go da"], "num_beams": 4, "max_new_tokens": 16}
        r = requests.post(f"{url}/v1/predict/toy-mt", json=body, timeout=30)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["text"] for p in preds] == ["cat blue red", "eat sit run sea"]
        assert all(set(p) == {"text", "tokens", "truncated"} for p in preds)
        assert all(p["tokens"] >= 3 and p["truncated"] is False for p in preds)
        body["num_beams"] = 1
        r = requests.post(f"{url}/v1/predict/toy-mt", json=body, timeout=30)
        assert [p["text"] for p in r.json()["predictions"]] == ["cat blue red", "eat sit run sea"]
        # a limit on the output length is honoured and reported
        r = requests.post(
            f"{url}/v1/predict/toy-mt",
            json={"inputs": ["sa fe go da ne"], "max_new_tokens": 2},
            timeout=30,
        )
        p = r.json()["predictions"][0]
        assert p["tokens"] == 2 and p["truncated"] is True
        for bad, message in [
            ({"inputs": ["ka"], "num_beams": 0}, "num_beams=0: allowed 1..8"),
            ({"inputs": ["ka"], "num_beams": 64}, "num_beams=64: allowed 1..8"),
            ({"inputs": ["ka"], "max_new_tokens": 10_000}, "max_new_tokens=10000: allowed 1..128"),
            ({"inputs": [""]}, "empty text"),
            ({"inputs": [["ka", "mo"]]}, "expected a string"),
            ({"inputs": ["ka"], "is_split_into_words": True}, "only for token_classification"),
        ]:
            r = requests.post(f"{url}/v1/predict/toy-mt", json=bad, timeout=30)
            assert r.status_code == 422, (bad, r.text)
            assert message in r.json()["error"]["message"], (bad, r.text)
        r = requests.post(f"{url}/v1/predict/toy-mt", json={"inputs": ["ka"], "num_beams": "4"})
        assert r.status_code == 422  # typed: a string is not a beam count


def test_the_translator_exports_to_marian_with_equal_greedy_outputs(toy_translator, tmp_path):
    transformers = pytest.importorskip("transformers")

    from lmplatform.models.io import export_hf, from_pretrained
    from lmplatform.registry.store import Registry

    sr, out = toy_translator
    folder = Registry(sr.job.registry).local_path("tasks", "toy-mt", out["version"])
    hf_dir = export_hf(folder, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(hf_dir).eval()
    assert type(hf).__name__ == "MarianMTModel"
    ours = from_pretrained(folder).eval()
    sentences = ["ka mo ti", "sa fe go da", "vi", "lu ne po ri fe"]
    batch = tok(sentences, return_tensors="pt", padding=True)
    ref = greedy(ours, batch["input_ids"], batch["attention_mask"], DecodeLimits(max_new_tokens=20))
    got = hf.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=20)
    texts = tok.batch_decode(got, skip_special_tokens=True)
    assert texts == [tok.decode(t) for t in ref.tokens]
    assert texts[:2] == ["cat blue red", "eat sit run sea"]

    # a pre-LN model has no transformers class: refused, naming why
    pre = Transformer(TransformerConfig(size="debug", vocab_size=300, pre_ln=True))
    from lmplatform.models.io import save_pretrained

    saved = save_pretrained(pre, tmp_path / "pre", tokenizer=folder / "tokenizer.json")
    with pytest.raises(ValueError, match="pre-LayerNorm.*MarianMTModel.*post-LN"):
        export_hf(saved, tmp_path / "pre-hf")


# --------------------------------------------------------------------------- warm start


def test_warm_started_sides_compute_what_the_parent_computes():
    """BERT fills the encoder (its outputs equal BERT's) and the decoder; GPT fills a pre-LN
    decoder (with cross-attention silenced, its states equal GPT's)."""
    from lmplatform.models import ElectraConfig, LSTMConfig
    from lmplatform.models.bert.model import BertConfig, BertForPretraining
    from lmplatform.models.gpt.model import GPT, GPTConfig
    from lmplatform.models.warm_start import check_part, warm_start, warm_start_config

    torch.manual_seed(0)
    ids, mask = _sources()
    bert = BertForPretraining(BertConfig(size="debug", vocab_size=60, dropout=0.0)).eval()
    model = Transformer(warm_start_config(bert.cfg, pad=0, bos=2, eos=3)).eval()
    warm_start(model, bert.bert, "both")
    memory, _ = model.encode_source(ids, mask)
    keep = mask.bool()
    assert torch.allclose(memory[keep], bert.bert(ids, mask)[keep], atol=1e-5)
    layer = model.decoder.layers[1]
    assert torch.equal(layer.fc1.weight, bert.bert.layers[1].ffn_in.weight)
    assert torch.equal(layer.self_attn.v_proj.bias, bert.bert.layers[1].attn.qkv.bias[128:])

    gpt = GPT(GPTConfig(size="debug", vocab_size=60)).eval()
    model = Transformer(warm_start_config(gpt.cfg, pad=0, bos=0, eos=0)).eval()
    warm_start(model, gpt, check_part(gpt.cfg, None, "parent"))
    assert model.cfg.pre_ln and model.cfg.activation == "gelu_tanh"
    for layer in model.decoder.layers:
        torch.nn.init.zeros_(layer.encoder_attn.out_proj.weight)
        torch.nn.init.zeros_(layer.encoder_attn.out_proj.bias)
    memory, memory_mask = model.encode_source(ids, mask)
    assert torch.allclose(model.decode(ids, memory, memory_mask), gpt.hidden(ids), atol=1e-5)
    with pytest.raises(ValueError, match="warm_start='encoder' from a gpt parent"):
        check_part(gpt.cfg, "encoder", "parent")
    with pytest.raises(ValueError, match="lstm model cannot warm-start"):
        check_part(LSTMConfig(size="debug"), None, "parent")
    narrow = ElectraConfig(size="debug", embedding_size=32)
    with pytest.raises(ValueError, match="parent: an ELECTRA with embeddings narrower"):
        check_part(narrow, None, "parent")
    assert check_part(ElectraConfig(size="debug"), None, "parent") == "both"


def test_a_translator_warm_started_from_bert_learns_and_serves(ray_local, tmp_path):
    """BERT2BERT on the toy language, trained by two Ray Train workers under DeepSpeed ZeRO-2:
    parent resolved and checked on the driver, the trial starts from its weights, checkpoints
    are the ranks' shards, the promoted model keeps the parent's tokenizer and lineage and
    translates."""
    import yaml

    from lmplatform.config import ConfigError, load_config
    from lmplatform.models.bert.model import BertConfig, BertForPretraining
    from lmplatform.models.io import from_pretrained, save_pretrained
    from lmplatform.registry.store import Registry
    from lmplatform.serving.predictors import ModelInfo, TaskPredictor
    from lmplatform.tokenization import TokenizerConfig, train_tokenizer
    from lmplatform.tune.config import FinetuneJobConfig, TrialParams
    from lmplatform.tune.data import load_task_data
    from lmplatform.tune.promotion import best_checkpoint, promote
    from lmplatform.tune.search import run_search
    from lmplatform.tune.trial import build_model

    rng = random.Random(1)
    train, dev = _toy_pairs(3000, rng), _toy_pairs(150, rng)
    texts = [s for pair in train for s in pair]
    tok = train_tokenizer(
        TokenizerConfig(kind="wordpiece", vocab_size=300), iter([texts]), tmp_path
    )
    vocab = len(json.loads(tok.read_text())["model"]["vocab"])
    torch.manual_seed(0)
    bert = BertForPretraining(BertConfig(size="debug", vocab_size=vocab, max_seq_len=64))
    reg = Registry(tmp_path / "registry")
    reg.publish(
        "pretrained", "toy-bert", save_pretrained(bert, tmp_path / "bert", tokenizer=tok), {}
    )
    cfg = tmp_path / "warm.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "warm-mt",
                "parent": "toy-bert",
                "output_dir": str(tmp_path / "runs"),
                "registry": str(tmp_path / "registry"),
                "task": {
                    "name": "warm-mt",
                    "type": "seq2seq",
                    "train": _write_pairs(tmp_path, "train", train),
                    "dev": _write_pairs(tmp_path, "dev", dev),
                    "max_seq_len": 32,
                },
                "train": {"lr": 1e-3, "batch_size": 32, "epochs": 10, "eval_every": 200},
                "search": {"num_samples": 1, "scheduler": "fifo", "space": {}},
                # two DDP ranks under DeepSpeed ZeRO-2, as a GPU cluster would run it
                "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 2},
            }
        )
    )
    job = load_config(FinetuneJobConfig, cfg, [])
    data = load_task_data(job)
    assert data.cfg.warm_start == "both" and data.parent_ref == "toy-bert@v0001"
    model = build_model(data, TrialParams.of(data.cfg))
    assert torch.equal(model.shared.weight, bert.bert.tok_emb.weight)
    assert torch.equal(model.encoder.layers[0].fc2.weight, bert.bert.layers[0].ffn_out.weight)
    for override, message in [
        ("warm_start=decoder", None),
        ("task.max_seq_len=100", "exceeds parent toy-bert@v0001's max_seq_len=64"),
    ]:
        job2 = load_config(FinetuneJobConfig, cfg, [override])
        if message is None:
            assert load_task_data(job2).cfg.warm_start == "decoder"
        else:
            with pytest.raises(ValueError, match=message):
                load_task_data(job2)
    with pytest.raises(ConfigError, match="warm_start is for seq2seq tasks"):
        load_config(
            FinetuneJobConfig,
            cfg,
            ["task.type=classification", "task.metric=accuracy", "warm_start=encoder"],
        )

    sr = run_search(job, verbose=0)
    (row,) = sr.table
    assert row["status"] == "done" and row["steps"] == 10 * (3000 // (32 * 2))
    _, ckpt = best_checkpoint(sr.results, output_dir=job.output_dir)
    with ckpt.as_directory() as d:  # one ZeRO optimizer partition per rank
        assert len(list(Path(d, "state").glob("*optim_states.pt"))) == 2
    out = promote(sr)
    assert out["value"] >= 80, (out, sr.table)
    folder = reg.local_path("tasks", "warm-mt", out["version"])
    meta = reg.metadata("tasks", "warm-mt", out["version"])
    assert meta["parent"] == "toy-bert@v0001"
    assert (folder / "tokenizer.json").read_text() == tok.read_text()
    assert from_pretrained(folder).cfg.embedding_layer_norm
    predictor = TaskPredictor(folder, ModelInfo(name="warm-mt", version=out["version"]))
    preds = predictor.predict(predictor.parse(["ka mo ti", "sa fe go da"], num_beams=4))
    assert [p["text"] for p in preds] == ["cat blue red", "eat sit run sea"]
