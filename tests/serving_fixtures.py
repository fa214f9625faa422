"""A small registry for the serving tests: random-weight debug models of every kind the API serves.

The API contract does not depend on accuracy, so no training runs here: a classification, a
pair-classification (on an ELECTRA discriminator), a token-classification and a semantic-role task (full fine-tuning), two
frozen-feature tasks from the same parent (a shared-encoder group), three LoRA adapter versions
on one base (an adapter group), a seq2seq task (a random encoder-decoder), a pretrained BERT
(fill-mask) and a pretrained GPT (generate). Also: the
HTTP API over in-process predictors (`local_server`).
"""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SRL_LABELS = ["O", "ARG0", "ARG1", "ARGM-TMP"]


def _tokenizers(root: Path, sample_dir: Path):
    from lmplatform.tokenization import TokenizerConfig, train_tokenizer

    lines = (sample_dir / "corpus" / "train.txt").read_text().splitlines()

    def batches():
        return (lines[i : i + 500] for i in range(0, len(lines), 500))

    wp = train_tokenizer(TokenizerConfig(kind="wordpiece", vocab_size=2000), batches(), root / "wp")
    bpe = train_tokenizer(TokenizerConfig(kind="bpe", vocab_size=2000), batches(), root / "bpe")
    return wp, bpe


def publish_task(
    reg,
    root: Path,
    name: str,
    encoder,
    kind: str,
    labels: list[str],
    tokenizer,
    *,
    frozen: bool = False,
    value: float = 0.5,
    seed: int = 0,
    parent: str = "tiny-bert@v0001",
    max_seq_len: int = 32,
) -> str:
    """Save a task model with a fresh head, publish it and promote it (force)."""
    from lmplatform.models.io import save_pretrained
    from lmplatform.models.tasks import TaskModel
    from lmplatform.tasks import task_type

    torch.manual_seed(seed)
    tt = task_type(kind)
    model = TaskModel(copy.deepcopy(encoder), kind, len(labels), frozen=frozen, layout=tt.layout)
    folder = root / f"{name}-{seed}"
    entity_types = (
        sorted({x[2:] for x in labels if x != "O"}) if kind == "token_classification" else None
    )
    save_pretrained(
        model,
        folder,
        tokenizer=tokenizer,
        extra={
            "labels": labels,
            "entity_types": entity_types,
            "max_seq_len": max_seq_len,
            "task_name": name,
        },
    )
    classes = {"token_classification": entity_types, "srl": labels[1:]}.get(kind, labels)
    return _publish_promoted(reg, name, folder, kind, labels, classes, value, parent)


def _publish_promoted(reg, name, folder, kind, labels, classes, value, parent) -> str:
    """Publish a task folder with made-up evidence (`value` everywhere) and promote it."""
    from lmplatform.tasks import task_type

    per_class = {
        c: {"precision": value, "recall": value, "f1": value, "support": 10} for c in classes
    }
    meta = {
        "kind": "task",
        "metric": task_type(kind).metrics[0],
        "value": value,
        "parent": parent,
        "labels": labels,
        "per_class": per_class,
    }
    version = reg.publish("tasks", name, folder, meta)
    reg.promote(name, version, value, force=True)
    return version


def publish_adapter_task(
    reg,
    root: Path,
    name: str,
    kind: str,
    labels: list[str],
    *,
    base: str = "tiny-bert@v0001",
    targets: tuple[str, ...] = ("attention", "ffn"),
    rank: int = 4,
    seed: int = 0,
    value: float = 0.5,
) -> str:
    """An adapter version on a pretrained model of the registry: LoRA with random updates
    (B != 0: the task answers unlike its base) and a random head; published and promoted."""
    from lmplatform.models.io import task_model_from_pretrained
    from lmplatform.models.lora import LoraLinear, LoraSpec, add_lora
    from lmplatform.registry.adapters import save_adapter
    from lmplatform.tasks import task_type

    torch.manual_seed(seed)
    folder = reg.local_path("pretrained", *base.split("@"))
    model = task_model_from_pretrained(folder, kind, len(labels), layout=task_type(kind).layout)
    spec = LoraSpec(rank, 2.0 * rank, 0.0, targets)
    add_lora(model.encoder, spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLinear):
                m.lora_b.normal_(0.0, 0.2)
    out = root / f"{name}-adapter-{seed}"
    extra = {"labels": labels, "max_seq_len": 32, "task_name": name}
    save_adapter(model, out, spec, (reg, base), folder / "tokenizer.json", extra)
    return _publish_promoted(reg, name, out, kind, labels, labels, value, base)


def build_registry(root: Path, sample_dir: Path) -> Path:
    from lmplatform.models import BertConfig, ElectraConfig, GPTConfig
    from lmplatform.models.io import save_pretrained
    from lmplatform.models.tasks import build_pretraining_model, encoder_of
    from lmplatform.registry.store import Registry

    wp, bpe = _tokenizers(root, sample_dir)
    reg = Registry(root / "registry")
    torch.manual_seed(0)
    bert = build_pretraining_model(BertConfig(size="debug", vocab_size=2000, max_seq_len=64))
    save_pretrained(bert, root / "tiny-bert", tokenizer=wp)
    reg.publish("pretrained", "tiny-bert", root / "tiny-bert", {"kind": "pretrained"})
    gpt = build_pretraining_model(GPTConfig(size="debug", vocab_size=2000, max_seq_len=64))
    save_pretrained(gpt, root / "tiny-gpt", tokenizer=bpe)
    reg.publish("pretrained", "tiny-gpt", root / "tiny-gpt", {"kind": "pretrained"})

    # an ELECTRA discriminator (narrower embeddings) under the pairs task: served like any other
    electra = build_pretraining_model(
        ElectraConfig(size="debug", vocab_size=2000, max_seq_len=64, embedding_size=32)
    )
    save_pretrained(electra, root / "tiny-electra", tokenizer=wp)
    reg.publish("pretrained", "tiny-electra", root / "tiny-electra", {"kind": "pretrained"})

    enc = encoder_of(bert)
    publish_task(reg, root, "sentiment", enc, "classification", ["negative", "positive"], wp)
    publish_task(
        reg,
        root,
        "pairs",
        encoder_of(electra),
        "pair_classification",
        ["entailment", "neutral", "contradiction"],
        wp,
        parent="tiny-electra@v0001",
    )
    publish_task(reg, root, "ner", enc, "token_classification", NER_LABELS, wp)
    publish_task(reg, root, "srl", enc, "srl", SRL_LABELS, wp)
    publish_task(reg, root, "topic-a", enc, "classification", ["a", "b", "c"], wp, frozen=True)
    publish_task(reg, root, "topic-b", enc, "classification", ["x", "y"], wp, frozen=True, seed=1)
    publish_translator(reg, root, sample_dir)
    # LoRA adapter versions on tiny-bert: one deployment serves them on one copy of it
    publish_adapter_task(reg, root, "lora-a", "classification", ["a", "b", "c"])
    publish_adapter_task(
        reg, root, "lora-b", "classification", ["x", "y"], targets=("attention",), rank=2, seed=1
    )
    publish_adapter_task(reg, root, "lora-ner", "token_classification", NER_LABELS, seed=2)
    return root / "registry"


def publish_translator(reg, root: Path, sample_dir: Path) -> str:
    """A seq2seq task "translate": a random debug encoder-decoder on a joint BPE (its outputs
    are nonsense; the contract, limits and batching are what the tests check)."""
    from lmplatform.models.io import save_pretrained
    from lmplatform.models.transformer.model import Transformer, TransformerConfig
    from lmplatform.tokenization import TokenizerConfig, special_tokens, train_tokenizer

    lines = (sample_dir / "corpus" / "train.txt").read_text().splitlines()[:2000]
    tok_file = train_tokenizer(
        TokenizerConfig(kind="joint_bpe", vocab_size=500), [lines], root / "joint"
    )
    from lmplatform.tokenization import load_tokenizer

    tok = load_tokenizer(tok_file)
    sp = special_tokens(tok)
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(
            size="debug",
            vocab_size=tok.get_vocab_size(),
            max_seq_len=64,
            pad_token_id=sp.pad,
            bos_token_id=sp.bos,
            eos_token_id=sp.eos,
        )
    )
    save_pretrained(
        model,
        root / "translate",
        tokenizer=tok_file,
        extra={
            "labels": [],
            "max_seq_len": 32,
            "task_name": "translate",
            "decoding": {"num_beams": 2, "max_new_tokens": 12, "max_beams": 4},
        },
    )
    version = reg.publish(
        "tasks",
        "translate",
        root / "translate",
        {"kind": "task", "metric": "bleu", "value": 1.0, "labels": [], "per_class": {}},
    )
    reg.promote("translate", version, 1.0, force=True)
    return version


@contextlib.contextmanager
def local_server(predictors: dict, **app_options) -> Iterator[str]:
    """The HTTP API over in-process predictors (no Ray), uvicorn on a free 127.0.0.1 port;
    yields its URL and stops it afterwards. `app_options`: make_app's (auth, cors_origins)."""
    import uvicorn

    from lmplatform.serving.api import make_app
    from lmplatform.serving.local import LocalBackend

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            make_app(LocalBackend(predictors), 100_000, **app_options),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def close(a, b, tol: float = 1e-4) -> bool:
    """Equal structure and labels, every float within `tol` (the group adds each update beside
    the shared weight, the task's own model has it merged: fp32 sums in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return a == b
