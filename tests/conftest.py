"""Shared fixtures: one local Ray per test session, the embedded sample, the shared real data."""

from __future__ import annotations

import os
import secrets
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

# Token authentication on for every Ray the tests start or join, with this session's own token
# (never ~/.ray/auth_token): heads, joining nodes, `ray job submit` and drivers inherit it, so
# nothing depends on a token an earlier run left in the home directory.
_TOKEN = _CACHE / "ray_auth_token"
_TOKEN.write_text(secrets.token_hex(32))
_TOKEN.chmod(0o600)
os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(_TOKEN))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# An S3 API on loopback (moto in server mode, started on first use by `s3_server`). Its endpoint
# and credentials go into the environment now, before Ray starts, so every process of the
# session (Ray workers, job drivers, subprocesses) reaches the same store the standard way.
S3_PORT = _free_port()
os.environ.update(
    AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}",
    AWS_ACCESS_KEY_ID="lmplatform-test",
    AWS_SECRET_ACCESS_KEY="lmplatform-test-secret",
    AWS_DEFAULT_REGION="us-east-1",
)

ROOT = Path(__file__).resolve().parents[1]


def model_folder(tmp_path: Path, payload: bytes = b"w" * 50_000) -> Path:
    """A folder the registry can publish: weights of `payload` and a config (a new one per call)."""
    import time

    src = tmp_path / f"model-{time.time_ns()}"
    src.mkdir()
    (src / "model.safetensors").write_bytes(payload)
    (src / "config.json").write_text("{}")
    return src


SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "README.md").is_file():
        pytest.fail(f"the shared data is missing: expected it at {SHARED} (see DEVELOPERS.md)")
    return SHARED


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    import socket
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", S3_PORT), 0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"moto S3 server did not start on 127.0.0.1:{S3_PORT}")
            time.sleep(0.2)
    yield os.environ["AWS_ENDPOINT_URL"]
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the loopback S3 server: 's3://<name>'."""
    import uuid

    from lmplatform import storage

    name = f"t-{uuid.uuid4().hex[:12]}"
    fs, _ = storage.filesystem(f"s3://{name}")
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def one_rank_group():
    """A one-rank gloo process group in this process, with the variables a launcher sets, as
    each Ray Train worker has: DeepSpeed engines can then be built in the test process. One
    for the session: DeepSpeed caches the groups it derives from it (deepspeed.utils.groups),
    so a group destroyed by one test module broke the next module's engines ("Group ... is not
    registered")."""
    import torch.distributed as dist

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


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
    from lmplatform.data.corpus import CorpusConfig, load_corpus
    from lmplatform.data.sources import DataSource

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
