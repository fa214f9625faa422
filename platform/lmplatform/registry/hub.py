"""Start from a Hugging Face checkpoint: `parent: hf:<folder or hub id>` (fine-tuning) or
`init_from: hf:…` (continued pretraining).

The checkpoint (a BERT- or GPT-2-family folder saved by transformers, with its tokenizer) is
converted once into a registry pretrained model `hf-<name>`, and an import of the same files
reuses that version. From there on it is a registry model like one we pretrained: trials on any
node fetch it from the registry, lineage names it, serving and export treat it the same.
Hub ids (`hf:google-bert/bert-base-cased`, optionally `@revision`) are downloaded with
`huggingface_hub` wherever a hub is reachable.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from lmplatform.registry.store import HF_PREFIX, Registry, RegistryError, is_hf

# what a conversion reads: configs, weights, tokenizer files (nothing else is downloaded)
_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)


def resolve_pretrained(reg: Registry, ref: str) -> tuple[str, str]:
    """A registry ref or an `hf:` checkpoint (imported on first use) -> (name, version)."""
    if is_hf(ref):
        return import_hf(reg, ref)
    return reg.resolve("pretrained", ref)


def import_hf(reg: Registry, ref: str) -> tuple[str, str]:
    """Convert `hf:<source>` into `pretrained/hf-<name>` (or find the version that already
    holds the same files) and return (name, version)."""
    from lmplatform.models.io import load_hf_folder, save_pretrained
    from lmplatform.tokenization import tokenizer_hash

    source = ref.removeprefix(HF_PREFIX)
    folder = fetch(source)
    digest = _digest(folder)
    name = "hf-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", _basename(source))[:61]
    for version in reversed(reg.versions("pretrained", name)):
        lineage = reg.metadata("pretrained", name, version).get("lineage", {})
        if lineage.get("source_sha256") == digest:
            return name, version
    try:
        model, tok_json, fresh = load_hf_folder(folder)
    except (ValueError, FileNotFoundError) as e:
        raise RegistryError(f"cannot import {ref}: {e}") from None
    with tempfile.TemporaryDirectory() as td:
        tok = Path(td) / "tokenizer.json"
        tok.write_text(tok_json)
        out = save_pretrained(model, Path(td) / "model", tokenizer=tok)
        cfg = model.cfg
        version = reg.publish(
            "pretrained",
            name,
            out,
            {
                "kind": "pretrained",
                "family": cfg.family,
                "size": None,
                "lineage": {
                    "imported_from": ref,
                    "source": str(folder),
                    "source_sha256": digest,
                    "tokenizer_hash": tokenizer_hash(tok),
                    "fresh_weights": fresh,  # heads the checkpoint lacked: initialised
                },
                "metrics": {},
            },
        )
    print(
        f"[import] {ref} -> pretrained/{name}@{version} ({cfg.family}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
        + (
            f"; initialised fresh: {', '.join(sorted({k.rsplit('.', 1)[0] for k in fresh}))}"
            if fresh
            else ""
        )
        + ")",
        flush=True,
    )
    return name, version


def fetch(source: str) -> Path:
    """A local folder, or a hub snapshot of the files a conversion reads."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise FileNotFoundError(f"hf:{source}: a file, not a checkpoint folder")
    if source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"hf:{source}: no such folder")
    repo, _, revision = source.partition("@")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo, revision=revision or None, allow_patterns=list(_FILES))
    except Exception as e:  # offline, unknown repo, gated model: one line naming it
        raise FileNotFoundError(
            f"hf:{source}: not a local folder, and the Hugging Face hub could not provide it "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return Path(path)


def _basename(source: str) -> str:
    local = Path(source).expanduser()
    if local.is_dir():
        return local.resolve().name
    return source.partition("@")[0].replace("/", "--")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for pattern in _FILES for p in folder.glob(pattern)):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
