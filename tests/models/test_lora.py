"""LoRA adapters (models/lora.py) on every family: which Linear layers each target group
wraps, that an adapted model starts as its base, that only the adapters get gradients, and
that folding the adapters into the weights (`merge_lora`) gives the unmerged model's
outputs."""

import pytest
import torch

from lmplatform.models import BertConfig, ElectraConfig, GPTConfig, TransformerConfig
from lmplatform.models.lora import LoraLinear, LoraSpec, add_lora, lora_targets, merge_lora
from lmplatform.models.tasks import TaskModel, build_encoder, build_pretraining_model
from lmplatform.models.transformer.model import Transformer

V = 300
CFGS = {
    "bert": BertConfig(size="debug", vocab_size=V),
    "electra": ElectraConfig(size="debug", vocab_size=V),
    "gpt": GPTConfig(size="debug", vocab_size=V),
}


def _model(family: str, task: bool = False):
    """The pretraining model, or (`task`) a 3-class classifier on the family's encoder; the
    encoder-decoder is its own task model."""
    torch.manual_seed(0)
    if family == "transformer":
        return Transformer(TransformerConfig(size="debug", vocab_size=V))
    if task:
        return TaskModel(build_encoder(CFGS[family]), "classification", 3, layout="pooled")
    return build_pretraining_model(CFGS[family])


def _batch(family: str) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (3, 16), generator=g)
    if family == "transformer":
        return {"input_ids": ids, "labels": torch.randint(5, V, (3, 12), generator=g)}
    return {"input_ids": ids, "labels": torch.tensor([0, 1, 2])}


def test_targets_pick_attention_and_feed_forward_layers_of_every_stack():
    bert = lora_targets(_model("bert"), ["attention"])
    assert bert and all(n.endswith((".qkv", ".out")) for n in bert)
    ffn = lora_targets(_model("bert"), ["ffn"])
    assert ffn and all(n.endswith((".ffn_in", ".ffn_out")) for n in ffn)
    assert not any("pooler" in n or "mlm_dense" in n for n in bert + ffn)  # not in the layers
    mt = lora_targets(_model("transformer"), ["attention"])
    assert {n.rsplit(".", 1)[1] for n in mt} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    gpt = lora_targets(_model("gpt"), ["attention", "ffn"])
    assert {n.rsplit(".", 1)[1] for n in gpt} == {"qkv", "out", "fc", "proj"}
    with pytest.raises(ValueError, match="targets"):
        LoraSpec(targets=("embeddings",))


@pytest.mark.parametrize("family", ["bert", "electra", "gpt", "transformer"])
def test_adapters_start_at_the_base_train_alone_and_merge_to_the_same_outputs(family):
    model = _model(family, task=True).eval()
    batch = _batch(family)
    key = "logits"
    with torch.no_grad():
        base = model(**batch)[key]
    names = add_lora(model, LoraSpec(rank=4, alpha=8, targets=("attention", "ffn")))
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, LoraLinear):
            m.lora_a.requires_grad_(True)
            m.lora_b.requires_grad_(True)
    with torch.no_grad():
        assert torch.allclose(model(**batch)[key], base)  # B = 0: the base model
    # a few steps on the adapters alone move the outputs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.endswith(("lora_a", "lora_b")) for n in trained)
    assert len(trained) == 2 * len(names)
    model.eval()
    with torch.no_grad():
        adapted = model(**batch)[key]
        assert not torch.allclose(adapted, base)
        assert merge_lora(model) == len(names)
        assert not any(isinstance(m, LoraLinear) for m in model.modules())
        torch.testing.assert_close(model(**batch)[key], adapted, rtol=1e-4, atol=1e-5)
