"""Shared fixtures: an isolated project folder per test and a tiny, fast training recipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh project: cwd and ABLATE_HOME point at tmp_path, so mlruns/ lands there."""
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)  # the default --storage: the project's journal
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return tmp_path


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60,000 characters of the default corpus: enough to overfit a tiny model in seconds."""
    from harness.core.data import load_corpus

    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(load_corpus("shakespeare").text[:60_000], encoding="utf-8")
    return path


@pytest.fixture
def tiny(small_corpus: Path) -> dict:
    """Dotted overrides for a model and budget small enough for unit tests (a second or two)."""
    return {
        "data.corpus": f"file:{small_corpus}",
        "data.train_chars": 6000,
        "data.block_size": 16,
        "model.n_layer": 1,
        "model.n_head": 2,
        "model.n_embd": 32,
        "train.batch_size": 16,
        "train.epochs": 3,
        "train.eval_windows": 32,
        "train.threads": 1,
        "sample.chars": 20,
        "sample.count": 1,
    }


def pytest_configure(config: pytest.Config) -> None:
    # Deterministic CPU math across tests; workers in subprocesses inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def postgres_server():
    """(create_database(name) -> URL) on a real PostgreSQL server, or skip when none can run."""
    import uuid

    from postgres import Cluster, server_bin

    url = os.environ.get("ABLATE_TEST_POSTGRES_URL")
    if url:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")

        def create(name: str) -> str:
            db = f"{name}_{uuid.uuid4().hex[:8]}"
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{db}"'))
            return url.rsplit("/", 1)[0] + "/" + db

        yield create
        engine.dispose()
        return
    if server_bin() is None:
        pytest.skip("no PostgreSQL server: apt-get install postgresql, or set ABLATE_TEST_POSTGRES_URL")
    cluster = Cluster()
    yield lambda name: cluster.create_database(f"{name}_{uuid.uuid4().hex[:8]}")
    cluster.stop()
