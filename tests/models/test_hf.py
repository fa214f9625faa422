"""Hugging Face both ways: every folder we write loads in transformers (Auto* classes, tokenizer,
pipelines) and computes what our model computes; transformers checkpoints import with parity."""

from __future__ import annotations

import warnings

import pytest
import torch

# `transformers` comes with the dev extra, which `make setup` installs: a missing one fails here
import transformers

from hf_checkpoints import save_bert
from lmplatform.models import BertConfig, ElectraConfig, GPTConfig, LSTMConfig
from lmplatform.models.io import export_hf, from_pretrained, load_hf_folder, save_pretrained
from lmplatform.models.tasks import TaskModel, build_encoder, build_pretraining_model
from lmplatform.tokenization import load_tokenizer, special_tokens

transformers.logging.set_verbosity_error()
ATOL = 1e-4
NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def toks(sample_dir, tmp_path_factory):
    from lmplatform.tokenization import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("toks")
    lines = (sample_dir / "corpus" / "train.txt").read_text().splitlines()

    def batches():
        return (lines[i : i + 500] for i in range(0, len(lines), 500))

    cased = TokenizerConfig(kind="wordpiece", vocab_size=1000, lowercase=False)
    wordpiece = train_tokenizer(cased, batches(), root / "wp")
    return {
        "bert": wordpiece,
        "electra": wordpiece,
        "gpt": train_tokenizer(
            TokenizerConfig(kind="bpe", vocab_size=1000), batches(), root / "bpe"
        ),
    }


def _cfg(family):
    if family == "electra":  # embeddings narrower than the layers, as in ELECTRA-Small
        return ElectraConfig(size="debug", vocab_size=1000, max_seq_len=64, embedding_size=32)
    return (BertConfig if family == "bert" else GPTConfig)(
        size="debug", vocab_size=1000, max_seq_len=64
    )


def _auto(cls, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(transformers, cls).from_pretrained(path, **kw).eval()


def _pipe(task, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.pipeline(task, model=str(path), device="cpu", **kw)


def _batch(tok_file, texts, pairs=None):
    """Our tokenizer's ids, right-padded, the way our serving encodes them."""
    tok = load_tokenizer(tok_file)
    enc = tok.encode_batch(list(zip(texts, pairs)) if pairs else texts)
    T = max(len(e.ids) for e in enc)
    pad = special_tokens(tok).pad
    ids = torch.full((len(enc), T), pad)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, e in enumerate(enc):
        n = len(e.ids)
        ids[i, :n], mask[i, :n], types[i, :n] = (
            torch.tensor(x) for x in (e.ids, [1] * n, e.type_ids)
        )
    return ids, mask, types


TEXTS = ["Anna Smith flew from Paris to Berlin .", "A great film , really great ."]
PAIRS = ["She lives in Rome .", "The plot was dull ."]


def test_bert_pretrained_folder_runs_fill_mask_and_matches(tmp_path, toks):
    torch.manual_seed(0)
    model = build_pretraining_model(_cfg("bert")).eval()
    save_pretrained(model, tmp_path / "m", tokenizer=toks["bert"])
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    assert (tok.mask_token, tok.pad_token, tok.cls_token, tok.sep_token, tok.unk_token) == (
        "[MASK]",
        "[PAD]",
        "[CLS]",
        "[SEP]",
        "[UNK]",
    )
    assert tok.model_max_length == 64
    ids, mask, types = _batch(toks["bert"], TEXTS, PAIRS)
    theirs = tok(TEXTS, PAIRS, padding=True, return_tensors="pt")
    assert torch.equal(theirs["input_ids"], ids) and torch.equal(theirs["token_type_ids"], types)
    assert types.sum() > 0  # the second text of a pair is segment 1
    hf = _auto("AutoModelForMaskedLM", tmp_path / "m")
    with torch.no_grad():
        ours = model.mlm_logits(model.bert(ids, mask, types))
        got = hf(**theirs).logits
    torch.testing.assert_close(got[mask.bool()], ours[mask.bool()], rtol=0, atol=ATOL)
    out = _pipe("fill-mask", tmp_path / "m", top_k=3)("Anna flew to [MASK] .")
    text_ids = tok("Anna flew to [MASK] .", return_tensors="pt")
    pos = (text_ids["input_ids"][0] == tok.mask_token_id).nonzero().item()
    with torch.no_grad():
        scores = model.mlm_logits(model.bert(text_ids["input_ids"]))[0, pos].softmax(-1)
    top = scores.topk(3)
    assert [o["token"] for o in out] == top.indices.tolist()
    torch.testing.assert_close(
        torch.tensor([o["score"] for o in out]), top.values, rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("family", ["bert", "gpt", "electra"])
def test_sequence_classifier_pipeline_with_pairs_matches(tmp_path, toks, family):
    torch.manual_seed(0)
    labels = ["negative", "neutral", "positive"]
    model = TaskModel(build_encoder(_cfg(family)), "pair_classification", 3).eval()
    save_pretrained(model, tmp_path / "m", tokenizer=toks[family], extra={"labels": labels})
    ids, mask, types = _batch(toks[family], TEXTS, PAIRS)
    with torch.no_grad():
        ours = model(ids, mask, types)["logits"]
        hf = _auto("AutoModelForSequenceClassification", tmp_path / "m")
        tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
        enc = tok(TEXTS, PAIRS, padding=True, return_tensors="pt")
        assert ("token_type_ids" in enc) == (family != "gpt")
        theirs = hf(**enc).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL)
    pipe = _pipe("text-classification", tmp_path / "m", top_k=None)
    for i, (a, b) in enumerate(zip(TEXTS, PAIRS)):
        got = {d["label"]: d["score"] for d in pipe({"text": a, "text_pair": b})}
        want = dict(zip(labels, ours[i].softmax(-1).tolist()))
        assert got.keys() == want.keys()
        for k in labels:
            assert abs(got[k] - want[k]) <= ATOL, (k, got, want)


@pytest.mark.parametrize("family", ["bert", "gpt", "electra"])
def test_token_classifier_pipeline_matches(tmp_path, toks, family):
    torch.manual_seed(0)
    model = TaskModel(build_encoder(_cfg(family)), "token_classification", len(NER)).eval()
    save_pretrained(model, tmp_path / "m", tokenizer=toks[family], extra={"labels": NER})
    ids, mask, _ = _batch(toks[family], TEXTS)
    with torch.no_grad():
        ours = model(ids, mask)["logits"]
        theirs = _auto("AutoModelForTokenClassification", tmp_path / "m")(
            input_ids=ids, attention_mask=mask
        ).logits
    torch.testing.assert_close(theirs[mask.bool()], ours[mask.bool()], rtol=0, atol=ATOL)
    tokens = _pipe("token-classification", tmp_path / "m", aggregation_strategy="none")(TEXTS[0])
    probs = ours[0].softmax(-1)
    assert tokens, "random weights still tag some pieces non-O"
    for t in tokens:  # every non-O piece: our label and our probability
        assert t["entity"] == NER[probs[t["index"]].argmax()]
        assert abs(t["score"] - probs[t["index"]].max().item()) <= ATOL
    grouped = _pipe("token-classification", tmp_path / "m", aggregation_strategy="simple")
    for e in grouped(TEXTS[0]):  # word groups with character offsets into the text
        assert e["entity_group"] in {"PER", "LOC"}
        assert TEXTS[0][e["start"] : e["end"]].strip() != ""


def test_gpt_folder_generates_like_ours(tmp_path, toks):
    torch.manual_seed(0)
    model = build_pretraining_model(_cfg("gpt")).eval()
    save_pretrained(model, tmp_path / "m", tokenizer=toks["gpt"])
    ids, _, _ = _batch(toks["gpt"], TEXTS[:1])
    with torch.no_grad():
        theirs = _auto("AutoModelForCausalLM", tmp_path / "m")(input_ids=ids).logits
    torch.testing.assert_close(theirs, model.logits(ids), rtol=0, atol=ATOL)
    out = _pipe("text-generation", tmp_path / "m")(
        TEXTS[0], max_new_tokens=8, do_sample=False, return_full_text=False
    )
    ours = ids
    for _ in range(8):  # greedy, our way
        ours = torch.cat([ours, model.logits(ours)[:, -1:].argmax(-1)], dim=1)
    tok = load_tokenizer(toks["gpt"])
    assert out[0]["generated_text"] == tok.decode(ours[0, ids.shape[1] :].tolist())


@pytest.mark.parametrize("family", ["bert", "gpt", "electra"])
def test_frozen_mean_pool_head_ships_its_code_and_is_refused_without_it(tmp_path, toks, family):
    torch.manual_seed(0)
    model = TaskModel(build_encoder(_cfg(family)), "classification", 2, frozen=True).eval()
    save_pretrained(model, tmp_path / "m", tokenizer=toks[family], extra={"labels": ["a", "b"]})
    with pytest.raises(ValueError, match="trust_remote_code"):
        _auto("AutoModelForSequenceClassification", tmp_path / "m")
    hf = _auto("AutoModelForSequenceClassification", tmp_path / "m", trust_remote_code=True)
    ids, mask, _ = _batch(toks[family], TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=ids, attention_mask=mask).logits,
            model(ids, mask)["logits"],
            rtol=0,
            atol=ATOL,
        )


def test_bilm_is_refused_by_export_and_by_transformers(tmp_path, toks):
    model = build_pretraining_model(LSTMConfig(size="debug", vocab_size=1000))
    save_pretrained(model, tmp_path / "m", tokenizer=toks["gpt"])
    assert from_pretrained(tmp_path / "m") is not None  # ours still loads it
    with pytest.raises(ValueError, match="no transformers counterpart"):
        export_hf(tmp_path / "m", tmp_path / "out")
    with pytest.raises(ValueError, match="lmplatform_bilm"):
        transformers.AutoConfig.from_pretrained(tmp_path / "m")


# --------------------------------------------------------------------------- import


def _hf_bert(tmp_path, toks, with_tokenizer_json=True):
    """A checkpoint written by transformers' own classes (random weights, tiny)."""
    model = save_bert(tmp_path / "hf-bert", toks["bert"], vocab_size=1000, seed=1)
    if not with_tokenizer_json:
        (tmp_path / "hf-bert" / "tokenizer.json").unlink()
        vocab = load_tokenizer(toks["bert"]).get_vocab()
        words = sorted(vocab, key=vocab.get)
        (tmp_path / "hf-bert" / "vocab.txt").write_text("\n".join(words) + "\n")
        (tmp_path / "hf-bert" / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    return model, tmp_path / "hf-bert"


def test_bert_checkpoint_imports_with_logits_parity(tmp_path, toks):
    hf_model, folder = _hf_bert(tmp_path, toks)
    model, tok_json, fresh = load_hf_folder(folder)
    # a masked-LM checkpoint has no NSP head and no pooler: those start fresh
    assert sorted(fresh) == sorted(
        f"{p}.{w}"
        for p in ("cls.seq_relationship", "bert.pooler.dense")
        for w in ("weight", "bias")
    )
    ids, mask, types = _batch(toks["bert"], TEXTS, PAIRS)
    model.eval()
    with torch.no_grad():
        theirs = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        ours = model.mlm_logits(model.bert(ids, mask, types))
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], rtol=0, atol=ATOL)
    assert load_tokenizer(toks["bert"]).to_str() != ""
    assert "[MASK]" in tok_json


def test_bert_checkpoint_without_tokenizer_json_imports_from_vocab_txt(tmp_path, toks):
    _, folder = _hf_bert(tmp_path, toks, with_tokenizer_json=False)
    _, tok_json, _ = load_hf_folder(folder)
    from tokenizers import Tokenizer

    ours = load_tokenizer(toks["bert"])
    theirs = Tokenizer.from_str(tok_json)
    for a, b in zip(TEXTS, PAIRS):
        assert theirs.encode(a, b).ids == ours.encode(a, b).ids


def test_gpt2_checkpoint_imports_with_logits_parity(tmp_path, toks):
    cfg = transformers.GPT2Config(vocab_size=1000, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    torch.manual_seed(2)
    hf_model = transformers.GPT2LMHeadModel(cfg).eval()
    hf_model.save_pretrained(tmp_path / "hf-gpt")
    transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(toks["gpt"]), eos_token="<|endoftext|>"
    ).save_pretrained(tmp_path / "hf-gpt")
    model, _, fresh = load_hf_folder(tmp_path / "hf-gpt")
    assert fresh == []
    ids, _, _ = _batch(toks["gpt"], TEXTS[:1])
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval().logits(ids), hf_model(input_ids=ids).logits, rtol=0, atol=ATOL
        )


def test_unsupported_checkpoints_are_refused_by_name(tmp_path):
    cfg = transformers.RobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    transformers.RobertaModel(cfg).save_pretrained(tmp_path / "r")
    with pytest.raises(ValueError, match="model_type 'roberta' cannot be imported"):
        load_hf_folder(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="parent: hf:"):
        from_pretrained(tmp_path / "r")


def test_electra_folder_is_an_electra_for_pretraining_and_imports_back(tmp_path, toks):
    """The registry version of an ELECTRA is its discriminator: `ElectraForPreTraining` and
    `ElectraModel` load the folder and compute our replaced-token logits and hidden states (the
    generator stays out); a checkpoint transformers wrote (ELECTRA-Small's narrower embeddings,
    a bare `ElectraModel` without the head) imports with parity, the head starting fresh."""
    torch.manual_seed(0)
    model = build_pretraining_model(_cfg("electra")).eval()
    save_pretrained(model, tmp_path / "m", tokenizer=toks["electra"])
    ids, mask, types = _batch(toks["electra"], TEXTS, PAIRS)
    with torch.no_grad():
        h = model.electra(ids, mask, types)
        ours = model.discriminator_logits(h)
        hf = _auto("AutoModelForPreTraining", tmp_path / "m")
        assert type(hf).__name__ == "ElectraForPreTraining"
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        hidden = _auto("AutoModel", tmp_path / "m")(
            input_ids=ids, attention_mask=mask, token_type_ids=types
        ).last_hidden_state
    torch.testing.assert_close(theirs[mask.bool()], ours[mask.bool()], rtol=0, atol=ATOL)
    torch.testing.assert_close(hidden[mask.bool()], h[mask.bool()], rtol=0, atol=ATOL)

    cfg = transformers.ElectraConfig(
        vocab_size=1000,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    for cls, fresh in (
        ("ElectraForPreTraining", []),
        ("ElectraModel", ["discriminator_predictions"]),
    ):
        torch.manual_seed(4)
        theirs_model = getattr(transformers, cls)(cfg).eval()
        folder = tmp_path / cls
        theirs_model.save_pretrained(folder)
        transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(toks["electra"]), mask_token="[MASK]", pad_token="[PAD]"
        ).save_pretrained(folder)
        imported, _, missing = load_hf_folder(folder)
        assert sorted({k.split(".")[0] for k in missing}) == fresh
        assert imported.cfg.embedding_size == 16 and imported.cfg.hidden_size == 32
        with torch.no_grad():
            out = theirs_model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            got = imported.eval().electra(ids, mask, types)
            want = out.last_hidden_state if cls == "ElectraModel" else None
            if want is None:
                torch.testing.assert_close(
                    imported.discriminator_logits(got)[mask.bool()],
                    out.logits[mask.bool()],
                    rtol=0,
                    atol=ATOL,
                )
            else:
                torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=0, atol=ATOL)
    # a generator checkpoint (google/electra-*-generator) is refused by name, not imported as
    # if it were the discriminator
    transformers.ElectraForMaskedLM(cfg).save_pretrained(tmp_path / "generator")
    with pytest.raises(ValueError, match="ElectraForMaskedLM is ELECTRA's generator"):
        load_hf_folder(tmp_path / "generator")
