"""A promotion reaches a running server without restart and without failed requests."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core import database
from core.settings import Settings
from model import model_store
from service.http.auth import hash_key
from tests.e2e.conftest import TINY_METADATA, start_server
from tests.support import ServerProcess
from training.promotion import promote, rollback

pytestmark = pytest.mark.slow

CRM = {"Authorization": "Bearer slk_test_crm"}

ADMIN_KEY = "slk_test_admin"
CRM_KEY = "slk_test_crm"
POLL_INTERVAL_S = 5.0


@pytest.fixture(scope="module")
def swap_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("swap-server")
    server = start_server(
        tmp,
        {
            "SENTILOOP_BASE_MODEL": str(tiny_model_dir),
            "SENTILOOP_MODEL_NAME": f"swap-{uuid.uuid4().hex[:6]}",
            # Long beside the reload test's promote-then-reload (a no-op reload would
            # rarely be rescued by a poll), short enough for the promotion test's wait.
            "SENTILOOP_MODEL_POLL_INTERVAL_S": str(POLL_INTERVAL_S),
            "SENTILOOP_AUTH": "required",
            "SENTILOOP_API_KEYS": json.dumps(
                [
                    {"name": "ops", "sha256": hash_key(ADMIN_KEY), "scopes": ["admin"]},
                    {"name": "crm", "sha256": hash_key(CRM_KEY), "scopes": ["predict"]},
                ]
            ),
        },
    )
    yield server
    server.stop()


def champion_version(server: ServerProcess) -> str:
    models = httpx.get(f"{server.url}/v1/models", headers=CRM, timeout=10).json()["models"]
    return str(next(m for m in models if m["reference"] == "champion")["model_version"])


def server_sessions(server: ServerProcess) -> tuple[Engine, sessionmaker[Session]]:
    url = f"sqlite:///{Path(server.log_path).parent / 'home' / 'sentiloop.db'}"
    engine = database.make_engine(url)
    return engine, database.make_session_factory(engine)


def test_promotion_switches_the_served_model_under_load(
    swap_server: ServerProcess, tiny_model_dir: Path
) -> None:
    assert champion_version(swap_server).startswith("zero-shot:")
    stored = model_store.save_model(tiny_model_dir, name="swap-e2e", metadata=TINY_METADATA)
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=swap_server.url, headers=CRM, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/v1/predict", json={"texts": ["hello there", "bad day"]})
                version = (
                    response.json()["predictions"][0]["model_version"]
                    if response.status_code == 200
                    else None
                )
                results.append((response.status_code, version))

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        while len(results) < 10:
            stop.wait(0.05)
        engine, sessions = server_sessions(swap_server)
        promote(settings=Settings(), sessions=sessions, tag=stored.tag, reason="e2e")
        engine.dispose()
        for _ in range(100):
            if champion_version(swap_server) == stored.tag:
                break
            stop.wait(0.1)
        count_at_switch = len(results)
        while len(results) < count_at_switch + 10:
            stop.wait(0.05)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert champion_version(swap_server) == stored.tag
    assert {status for status, _ in results} == {200}
    versions = [version for _, version in results]
    assert versions[0] is not None and versions[0].startswith("zero-shot:")
    assert versions[-4:] == [stored.tag] * 4


def test_admin_reload_needs_the_key_and_switches_at_once(
    swap_server: ServerProcess, tiny_model_dir: Path
) -> None:
    url = f"{swap_server.url}/v1/admin/reload-models"
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers=CRM).status_code == 403
    previous = champion_version(swap_server)
    newer = model_store.save_model(tiny_model_dir, name="swap-e2e", metadata=TINY_METADATA)
    engine, sessions = server_sessions(swap_server)
    promote(settings=Settings(), sessions=sessions, tag=newer.tag, reason="e2e reload")
    response = httpx.post(url, json={}, headers={"X-API-Key": ADMIN_KEY}, timeout=30)
    assert response.status_code == 200, response.text
    served = {m["reference"]: m["model_version"] for m in response.json()["models"]}
    assert served["champion"] == newer.tag
    assert champion_version(swap_server) == newer.tag
    rollback(settings=Settings(), sessions=sessions)
    engine.dispose()
    after = httpx.post(url, json={}, headers={"X-API-Key": ADMIN_KEY}, timeout=30).json()
    assert {m["reference"]: m["model_version"] for m in after["models"]}["champion"] == previous
    assert champion_version(swap_server) == previous
