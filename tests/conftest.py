"""Shared fixtures: one local Ray per test session, the embedded sample, the shared real data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from lmplatform.runtime import LOCAL_ONLY_ENV

# Set before anything imports ray or datasets (both read these at import time): the test
# cluster stays on loopback, and caches go to a per-session folder, never the user's.
os.environ.update(LOCAL_ONLY_ENV)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_CACHE = Path(tempfile.mkdtemp(prefix="lmplatform-tests-"))
os.environ["LMPLATFORM_CACHE"] = str(_CACHE / "lmplatform")
os.environ["HF_DATASETS_CACHE"] = str(_CACHE / "hf-datasets")
os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "README.md").is_file():
        pytest.fail(f"the shared data is missing: expected it at {SHARED} (see DEVELOPERS.md)")
    return SHARED


@pytest.fixture(scope="session")
def ray_local():
    from lmplatform.runtime import init_ray

    ray = init_ray(num_cpus=2, quiet=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    from lmplatform.data.sample import ensure_sample

    return ensure_sample()


@pytest.fixture(scope="session")
def wikitext_corpus(shared_data):
    """The shared WikiText-2 files as a documents dataset (articles split at ' = Title = ')."""
    from lmplatform.data.sources import CorpusConfig, DataSource, load_corpus

    cfg = CorpusConfig(
        source=DataSource(path=str(shared_data / "corpus")), document_split="wikitext"
    )
    return cfg, load_corpus(cfg)


@pytest.fixture(scope="session")
def wordpiece_8k(wikitext_corpus, tmp_path_factory):
    """WordPiece, vocab 8,000, trained on the shared corpus (streamed from the dataset)."""
    from lmplatform.tokenization import TokenizerConfig, train_tokenizer

    _, corpus = wikitext_corpus
    out = tmp_path_factory.mktemp("wp8k")
    batches = (b["text"] for b in corpus.iter(batch_size=200))
    return train_tokenizer(
        TokenizerConfig(kind="wordpiece", vocab_size=8000), batches, out, length=len(corpus)
    )


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_CACHE, ignore_errors=True)
