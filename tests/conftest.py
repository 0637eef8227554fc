from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import S3Server, build_tiny_model, throwaway_postgres

_BENTOML_HOME = tempfile.mkdtemp(prefix="sentiloop-test-bentoml-")


def pytest_configure(config: pytest.Config) -> None:
    # A private BentoML store for the run (before anything imports bentoml).
    os.environ["BENTOML_HOME"] = _BENTOML_HOME
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    # Settings() in tests writes (ONNX exports, spools) here, not into the checkout.
    os.environ["SENTILOOP_HOME"] = str(Path(_BENTOML_HOME) / "sentiloop-home")
    # Tests run on the small English preset and its zero-shot cold start unless they
    # ask for the default (tests/e2e/test_shipped_model.py): fast start-ups.
    os.environ["SENTILOOP_BASE_MODEL"] = "all-minilm-l6-v2"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def bentoml_home() -> Path:
    return Path(_BENTOML_HOME)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sentiloop.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store test runs on a real SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sentiloop.db'}"
    else:
        with throwaway_postgres() as url:
            yield url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API server (moto_server) with one bucket; tests use their own prefix."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()
