"""Concurrency: 10,000 feedback posts on each database, from 50 clients to a server
of two API workers (two processes writing one SQLite file or one PostgreSQL
database). Several replicas on one PostgreSQL: tests/e2e/test_replicas.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.e2e.conftest import start_server
from tests.support import ServerProcess, throwaway_postgres, wait_until

pytestmark = pytest.mark.slow

FEEDBACK_POSTS = 10_000
CLIENTS = 50
# Two API workers: writers in two processes, and both cores busy (one worker was
# the bottleneck: 184 posts/s against 250 with two, here); a model process each, as
# many as one worker starts on 2 cores (the test scores 100 texts).
TWO_WORKERS = {
    "BENTOML_CONFIG_OPTIONS": "services.sentiloop.workers=2",
    "SENTILOOP_MODEL_PROCESSES": "1",
}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    if request.param == "sqlite":
        server = start_server(tmp_path, TWO_WORKERS)
        yield server, f"sqlite:///{tmp_path / 'home' / 'sentiloop.db'}"
        server.stop()
        return
    with throwaway_postgres() as url:
        server = start_server(
            tmp_path, {"DATABASE_URL": url, "SENTILOOP_AUTH": "disabled", **TWO_WORKERS}
        )
        yield server, url
        server.stop()


def api_workers(server: ServerProcess) -> list[Any]:
    """The server's API worker processes (``psutil.Process``)."""
    import psutil

    return [
        child
        for child in psutil.Process(server.process.pid).children(recursive=True)
        if "_bentoml_impl.worker.service" in " ".join(child.cmdline())
    ]


def test_ten_thousand_concurrent_feedback_posts_store_exactly_ten_thousand_rows(
    backend: tuple[ServerProcess, str],
) -> None:
    server, url = backend
    with httpx.Client(base_url=server.url, timeout=60) as client:
        predictions = client.post("/v1/predict", json={"texts": [f"c {n}" for n in range(100)]})
        ids = [p["prediction_id"] for p in predictions.json()["predictions"]]
    run = uuid.uuid4().hex[:8]
    # Labels come after the predictions are logged: a post racing the log writer of
    # the other worker waits for its row, and past 4 such waiters is a 503 to retry
    # (SENTILOOP_FEEDBACK_LOOKUP_WAITERS; tests/integration/test_feedback_api.py).
    engine = create_engine(url)
    with engine.connect() as connection:
        count = text("SELECT count(*) FROM predictions")
        assert wait_until(lambda: connection.execute(count).scalar_one() >= len(ids), 30)
    engine.dispose()

    def post_slice(worker: int) -> list[int]:
        statuses = []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for n in range(worker, FEEDBACK_POSTS, CLIENTS):
                body = {"prediction_id": ids[n % len(ids)], "label": "neutral",
                        "idempotency_key": f"{run}-{n}"}  # fmt: skip
                statuses.append(client.post("/v1/feedback", json=body).status_code)
        return statuses

    workers = api_workers(server)
    assert len(workers) == 2
    cpu_before = [sum(worker.cpu_times()[:2]) for worker in workers]
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = [status for chunk in pool.map(post_slice, range(CLIENTS)) for status in chunk]
    used = [sum(w.cpu_times()[:2]) - b for w, b in zip(workers, cpu_before, strict=True)]
    assert min(used) > 0.2 * sum(used), used  # both workers took posts
    assert len(statuses) == FEEDBACK_POSTS
    assert {status: statuses.count(status) for status in set(statuses)} == {201: FEEDBACK_POSTS}
    engine = create_engine(url)
    with engine.connect() as connection:
        assert (
            connection.execute(text("SELECT count(*) FROM feedback")).scalar_one() == FEEDBACK_POSTS
        )
    engine.dispose()
