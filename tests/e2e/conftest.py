from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from model import model_store
from tests.support import ServerProcess

TINY_METADATA = {
    "base_model": "tiny-random-bert",
    "template_versions": ["v2"],
    "data_sha256": "none",
    "metrics": {},
}


@pytest.fixture(scope="session")
def tiny_model_tag(tiny_model_dir: Path, bentoml_home: Path) -> str:
    return model_store.save_model(tiny_model_dir, name="e2e-tiny", metadata=TINY_METADATA).tag


# For servers whose tests are not about the model processes: one model process
# instead of one per core (ready in 6.7 s instead of 12.8 on 2 cores: the second
# process loads its model beside the first, on the same cores).
ONE_MODEL_PROCESS = {"SENTILOOP_MODEL_PROCESSES": "1"}


def start_server(tmp: Path, env: dict[str, str], host: str = "127.0.0.1") -> ServerProcess:
    server = ServerProcess(
        {"SENTILOOP_HOME": str(tmp / "home"), **env}, tmp / "server.log", host=host
    )
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def ab_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_tag: str
) -> Iterator[ServerProcess]:
    """A/B: v1 with the zero-shot model, v2 with the tiny stored model; SQLite store."""
    tmp = tmp_path_factory.mktemp("ab-server")
    split = [
        {"template_version": "v1", "model": "zero-shot", "weight": 1},
        {"template_version": "v2", "model": tiny_model_tag, "weight": 1},
    ]
    server = start_server(
        tmp,
        {
            "SENTILOOP_TRAFFIC_SPLIT": json.dumps(split),
            "SENTILOOP_TEXT_STORAGE": "redacted",
            **ONE_MODEL_PROCESS,
        },
    )
    yield server
    server.stop()
