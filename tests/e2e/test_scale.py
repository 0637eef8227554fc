"""Concurrency and scale-out: 10,000 feedback posts, and two replicas on one PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from core import database
from core.settings import Settings
from model import model_store
from tests.e2e.conftest import TINY_METADATA, start_server
from tests.support import ServerProcess, throwaway_postgres
from training.promotion import promote

pytestmark = pytest.mark.slow

FEEDBACK_POSTS = 10_000
CLIENTS = 50


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    if request.param == "sqlite":
        server = start_server(tmp_path, {})
        yield server, f"sqlite:///{tmp_path / 'home' / 'sentiloop.db'}"
        server.stop()
        return
    with throwaway_postgres() as url:
        server = start_server(tmp_path, {"DATABASE_URL": url, "SENTILOOP_AUTH": "disabled"})
        yield server, url
        server.stop()


def test_ten_thousand_concurrent_feedback_posts_store_exactly_ten_thousand_rows(
    backend: tuple[ServerProcess, str],
) -> None:
    server, url = backend
    with httpx.Client(base_url=server.url, timeout=60) as client:
        predictions = client.post("/v1/predict", json={"texts": [f"c {n}" for n in range(100)]})
        ids = [p["prediction_id"] for p in predictions.json()["predictions"]]
    run = uuid.uuid4().hex[:8]

    def post_slice(worker: int) -> list[int]:
        statuses = []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for n in range(worker, FEEDBACK_POSTS, CLIENTS):
                body = {"prediction_id": ids[n % len(ids)], "label": "neutral",
                        "idempotency_key": f"{run}-{n}"}  # fmt: skip
                statuses.append(client.post("/v1/feedback", json=body).status_code)
        return statuses

    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = [status for chunk in pool.map(post_slice, range(CLIENTS)) for status in chunk]
    assert len(statuses) == FEEDBACK_POSTS
    assert {status: statuses.count(status) for status in set(statuses)} == {201: FEEDBACK_POSTS}
    engine = create_engine(url)
    with engine.connect() as connection:
        assert (
            connection.execute(text("SELECT count(*) FROM feedback")).scalar_one() == FEEDBACK_POSTS
        )
    engine.dispose()


@pytest.mark.postgres
def test_two_replicas_on_one_postgres_both_log_and_both_pick_up_a_promotion(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with throwaway_postgres() as url:
        env = {"DATABASE_URL": url, "SENTILOOP_AUTH": "disabled",
               "SENTILOOP_MODEL_POLL_INTERVAL_S": "0.5",
               "SENTILOOP_MODEL_NAME": f"replica-{uuid.uuid4().hex[:6]}"}  # fmt: skip
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with ThreadPoolExecutor(2) as pool:  # start both at once: migrations must not race
            replicas = list(pool.map(lambda d: start_server(tmp_path / d, env), ["a", "b"]))
        try:
            for n, replica in enumerate(replicas):
                response = httpx.post(
                    f"{replica.url}/v1/predict", json={"texts": [f"r{n}"] * 5}, timeout=30
                )
                assert response.status_code == 200
            stored = model_store.save_model(
                tiny_model_dir, name="replica-e2e", metadata=TINY_METADATA
            )
            engine = database.make_engine(url)
            promote(
                settings=Settings(),
                sessions=database.make_session_factory(engine),
                tag=stored.tag,
                reason="e2e",
            )
            engine.dispose()
            deadline = time.monotonic() + 30
            switched: set[int] = set()
            while len(switched) < 2 and time.monotonic() < deadline:
                for n, replica in enumerate(replicas):
                    [p] = httpx.post(
                        f"{replica.url}/v1/predict", json={"text": "x"}, timeout=30
                    ).json()["predictions"]
                    if p["model_version"] == stored.tag:
                        switched.add(n)
                time.sleep(0.3)
            assert switched == {0, 1}
        finally:
            for replica in replicas:
                replica.stop()
        engine = create_engine(url)
        with engine.connect() as connection:
            texts = set(connection.execute(text("SELECT text FROM predictions")).scalars())
        engine.dispose()
        assert {"r0", "r1"} <= texts
