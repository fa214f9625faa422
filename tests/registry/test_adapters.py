"""Adapter versions: a task version that holds only LoRA adapters and a head, naming its base.
It loads on its base (checked by checksum, downloaded once per node from S3), answers as the
unmerged model does, and exports to peft's layout (`PeftModel.from_pretrained` gives our
outputs) or, merged, to a plain transformers folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmplatform.cli.registry import main
from serving_fixtures import _tokenizers, close, publish_adapter_task

SENTENCES = ["the film was a delight", "a dull , lifeless story", "nothing happens at all ."]


@pytest.fixture(scope="module")
def reg_root(tmp_path_factory, sample_dir):
    from lmplatform.models import BertConfig, ElectraConfig, GPTConfig
    from lmplatform.models.io import save_pretrained
    from lmplatform.models.tasks import build_pretraining_model
    from lmplatform.registry.store import Registry

    root = tmp_path_factory.mktemp("adapters")
    wp, bpe = _tokenizers(root, sample_dir)
    reg = Registry(root / "registry")
    torch.manual_seed(0)
    for name, cfg, tok in (
        ("tiny-bert", BertConfig(size="debug", vocab_size=2000, max_seq_len=64), wp),
        ("tiny-gpt", GPTConfig(size="debug", vocab_size=2000, max_seq_len=64), bpe),
        (
            "tiny-electra",
            ElectraConfig(size="debug", vocab_size=2000, max_seq_len=64, embedding_size=32),
            wp,
        ),
    ):
        save_pretrained(build_pretraining_model(cfg), root / name, tokenizer=tok)
        reg.publish("pretrained", name, root / name, {"kind": "pretrained"})
    publish_adapter_task(reg, root, "sent", "classification", ["neg", "pos"])
    publish_adapter_task(
        reg, root, "sent-gpt", "classification", ["neg", "pos"], base="tiny-gpt@v0001", seed=1
    )
    publish_adapter_task(reg, root, "ner", "token_classification", ["O", "B-PER", "I-PER"])
    publish_adapter_task(
        reg, root, "sent-electra", "classification", ["neg", "pos"], base="tiny-electra@v0001"
    )
    publish_adapter_task(
        reg, root, "sent-attn", "classification", ["a", "b", "c"], targets=("attention",), rank=2
    )
    return root


def _inputs(folder, texts=SENTENCES) -> list[dict]:
    """One unpadded batch per sentence: no family's padding convention is in the comparison."""
    from lmplatform.tokenization import load_tokenizer

    tok = load_tokenizer(folder / "tokenizer.json")
    return [{"input_ids": torch.tensor([tok.encode(t).ids])} for t in texts]


def _logits(model, inputs: list[dict]) -> torch.Tensor:
    """Every sentence's logits, one row (token tasks: one row per token) after another."""
    with torch.no_grad():
        out = [model(**x) for x in inputs]
    return torch.cat([(o["logits"] if isinstance(o, dict) else o.logits)[0] for o in out])


def test_an_adapter_version_is_small_names_its_base_and_loads_as_its_unmerged_model(
    reg_root, capsys
):
    from lmplatform.models.io import from_pretrained
    from lmplatform.registry.adapters import load_adapter_model, load_task_model
    from lmplatform.registry.store import Registry

    reg = Registry(reg_root / "registry")
    meta = reg.metadata("tasks", "sent", "v0001")
    a = meta["adapter"]
    assert a["base"] == "tiny-bert@v0001" and a["rank"] == 4 and len(a["modules"]) == 8
    assert set(meta["files"]) == {"adapter.safetensors", "tokenizer.json"}
    mine = sum(f["bytes"] for f in meta["files"].values())
    base = sum(
        f["bytes"] for f in reg.metadata("pretrained", "tiny-bert", "v0001")["files"].values()
    )
    assert mine < base / 5, (mine, base)
    folder = reg.local_path("tasks", "sent", "v0001")
    with pytest.raises(ValueError, match="an adapter version"):
        from_pretrained(folder)  # no weights of its own: a clear refusal, not a shape error
    unmerged = load_adapter_model(reg, folder, merge=False)
    merged = load_task_model(reg, folder)
    base_model = load_adapter_model(reg, folder, merge=False)
    for m in base_model.modules():  # the same model without its updates
        if hasattr(m, "lora_b"):
            torch.nn.init.zeros_(m.lora_b)
    inputs = _inputs(folder)
    got, want, plain = (_logits(m, inputs) for m in (merged, unmerged, base_model))
    # fp32 sums in another order: a few ulps of logits of size ~1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the adapters do change the answers (a fresh head's logits are small: relative)
    assert (got - plain).abs().max() > 0.05 * got.abs().max()
    assert main(["--registry", str(reg_root / "registry"), "show", "tasks/sent"]) is None
    out = capsys.readouterr().out
    assert "adapter   LoRA rank 4, alpha 8.0, attention, ffn (8 layers)" in out
    assert "base      pretrained/tiny-bert@v0001" in out and "CHANGED" not in out


def test_an_adapter_version_refuses_a_base_that_is_not_the_one_it_was_trained_on(
    reg_root, tmp_path
):
    from lmplatform.registry.adapters import load_task_model
    from lmplatform.registry.store import Registry, RegistryError

    copy = tmp_path / "registry"
    shutil.copytree(reg_root / "registry", copy)
    reg = Registry(copy)
    meta_file = copy / "pretrained" / "tiny-bert" / "v0001" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["files"]["model.safetensors"]["sha256"] = "0" * 64  # its weights replaced
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="not the one the adapters were trained on"):
        load_task_model(reg, reg.local_path("tasks", "sent", "v0001"))


def test_adapter_versions_on_s3_share_one_cached_base_per_node(reg_root, s3_bucket, tmp_path):
    """Two tasks on one base in an S3 registry: the base is downloaded once into the node's
    cache, the adapters beside it."""
    from lmplatform import storage
    from lmplatform.registry.adapters import load_task_model
    from lmplatform.registry.store import Registry

    local = Registry(reg_root / "registry")
    reg = Registry(s3_bucket)
    for kind, name in (("pretrained", "tiny-bert"), ("tasks", "sent"), ("tasks", "ner")):
        folder = local.local_path(kind, name, "v0001")
        meta = {k: v for k, v in local.metadata(kind, name, "v0001").items() if k != "files"}
        shutil.copytree(
            folder, tmp_path / name, ignore=shutil.ignore_patterns("metadata.json", ".claim")
        )
        (tmp_path / name / "metadata.json").write_text(json.dumps(meta))
        assert reg.publish(kind, name, tmp_path / name, meta) == "v0001"
    for task in ("sent", "ner"):
        model = load_task_model(reg, reg.local_path("tasks", task, "v0001"))
        want = load_task_model(local, local.local_path("tasks", task, "v0001"))
        for (k, a), b in zip(model.state_dict().items(), want.state_dict().values()):
            assert torch.equal(a, b), k
    cached = list((storage.cache_root() / "registry").glob("*/pretrained/tiny-bert/v0001-*"))
    assert len([c for c in cached if str(c).count(".tmp-") == 0]) == 1, cached


@pytest.mark.parametrize("task", ["sent", "sent-gpt", "sent-electra", "ner"])
def test_peft_loads_the_export_and_gives_our_outputs_and_merge_gives_a_plain_folder(
    reg_root, tmp_path, task, capsys
):
    """`export --hf` of an adapter version: peft's PeftModel over the transformers folder of
    the base answers as our model (BERT's fused qkv as query/key/value adapters sharing A;
    GPT-2's Conv1D with fan_in_fan_out); `--merge` is one folder transformers loads alone."""
    import transformers
    from peft import PeftModel

    from lmplatform.registry.adapters import load_task_model
    from lmplatform.registry.store import Registry

    reg = Registry(reg_root / "registry")
    folder = reg.local_path("tasks", task, "v0001")
    inputs = _inputs(folder)
    ours = _logits(load_task_model(reg, folder), inputs)
    registry = ["--registry", str(reg_root / "registry")]
    main([*registry, "export", f"tasks/{task}", "--hf", str(tmp_path / "peft")])
    printed = capsys.readouterr().out
    assert "PeftModel.from_pretrained" in printed
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    auto = (
        transformers.AutoModelForTokenClassification
        if task == "ner"
        else transformers.AutoModelForSequenceClassification
    )
    base = auto.from_pretrained(tmp_path / "peft" / "base")
    model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    torch.testing.assert_close(_logits(model, inputs), ours, atol=1e-4, rtol=1e-4)
    main([*registry, "export", f"tasks/{task}", "--hf", str(tmp_path / "merged"), "--merge"])
    merged = auto.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(_logits(merged, inputs), ours, atol=1e-4, rtol=1e-4)


def test_an_adapter_group_answers_mixed_batches_as_each_task_alone(reg_root):
    """One forward over rows of three tasks (ranks 4 and 2, one adapting attention only, a
    token task): every row gets its own task's updates and head, as the task's merged model
    alone answers it; a task on another base, or ELECTRA's own pooler, cannot join."""
    from lmplatform.registry.store import Registry
    from lmplatform.serving.adapters import AdapterGroup, SharedBase, load_adapter
    from lmplatform.serving.loading import _task_ref, load_task

    reg = Registry(reg_root / "registry")
    tasks = ["sent", "sent-attn", "ner"]
    base = SharedBase(reg, reg.metadata("tasks", "sent", "v0001")["adapter"], "sent")
    adapters = {t: load_adapter(reg, base, t, "v0001", _task_ref(reg, t, "v0001")) for t in tasks}
    group = AdapterGroup(base, adapters)
    requests = [(tasks[i % 3], [SENTENCES[i % 3]]) for i in range(7)]
    got = group.predict([(t, group.predictors[t].parse(x)) for t, x in requests])
    assert group.calls == 1  # every row in one forward
    for (task, inputs), answer in zip(requests, got):
        own = load_task(reg, task, "v0001")
        want = own.predict(own.parse(inputs))
        assert close(answer, want), (task, answer, want)
    # a group after a swap may leave layers that earlier adapters wrapped unused (ffn here)
    alone = AdapterGroup(base, {"sent-attn": adapters["sent-attn"]})
    (answer,) = alone.predict([("sent-attn", alone.predictors["sent-attn"].parse(SENTENCES[:1]))])
    own = load_task(reg, "sent-attn", "v0001")
    want = own.predict(own.parse(SENTENCES[:1]))[0]["scores"]
    assert all(abs(answer[0]["scores"][k] - v) < 1e-4 for k, v in want.items())
    with pytest.raises(ValueError, match="the group's base is pretrained/tiny-bert@v0001"):
        load_adapter(reg, base, "sent-gpt", "v0001", _task_ref(reg, "sent-gpt", "v0001"))
    other = SharedBase(reg, reg.metadata("tasks", "sent-electra", "v0001")["adapter"], "x")
    with pytest.raises(ValueError, match="trains encoder weights of its own"):
        load_adapter(reg, other, "sent-electra", "v0001", _task_ref(reg, "sent-electra", "v0001"))
