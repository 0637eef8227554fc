"""Faults with real processes: the database going away, and kill -9 mid-burst."""

from __future__ import annotations

import re
import sqlite3
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.e2e.conftest import ONE_MODEL_PROCESS, start_server
from tests.support import ServerProcess, TcpProxy, throwaway_postgres, wait_until

pytestmark = pytest.mark.slow


def metric(server: ServerProcess, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", httpx.get(f"{server.url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.postgres
def test_database_outage_spools_predictions_refuses_feedback_and_recovers(tmp_path: Path) -> None:
    with throwaway_postgres() as direct_url:
        url = make_url(direct_url)
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
        proxy.start()
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        server = start_server(
            tmp_path, {"DATABASE_URL": proxied, "SENTILOOP_AUTH": "disabled", **ONE_MODEL_PROCESS}
        )
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                before = client.post("/v1/predict", json={"texts": ["fine"] * 10}).json()[
                    "predictions"
                ]
                proxy.stop()  # the database is gone
                during = []
                for n in range(6):
                    response = client.post(
                        "/v1/predict", json={"texts": [f"outage {n} {i}" for i in range(10)]}
                    )
                    assert response.status_code == 200, response.text
                    during += response.json()["predictions"]
                refused = client.post(
                    "/v1/feedback",
                    json={"prediction_id": before[0]["prediction_id"], "verdict": "correct"},
                )
                assert refused.status_code == 503 and refused.headers.get("retry-after")
                assert "unavailable" in refused.json()["error"]
                # No driver detail (host, port, server state) reaches the client.
                assert str(proxy.port) not in refused.text and "127.0.0.1" not in refused.text
                assert "connection" not in refused.text.lower()
                # A batch answer with items the database could not take says when to
                # retry, as a 503 answer does (issue 24, item 21).
                batch = client.post(
                    "/v1/feedback/batch",
                    json={"items": [{"prediction_id": p["prediction_id"], "verdict": "correct"}
                                    for p in before[1:4]]},
                )  # fmt: skip
                assert batch.status_code == 200, batch.text
                assert [item["status"] for item in batch.json()["results"]] == [503] * 3
                assert batch.headers.get("retry-after") == "5"
                assert client.get("/readyz").status_code == 503
                assert wait_until(
                    lambda: metric(server, "sentiloop_prediction_log_spooled_total") >= 60
                )
                proxy.start()  # the database is back
                assert wait_until(lambda: client.get("/readyz").status_code == 200)
                accepted = client.post(
                    "/v1/feedback",
                    json={"prediction_id": during[-1]["prediction_id"], "verdict": "correct"},
                )
                assert accepted.status_code == 201, accepted.text
                assert wait_until(
                    lambda: (
                        metric(server, "sentiloop_prediction_log_replayed_total")
                        == metric(server, "sentiloop_prediction_log_spooled_total")
                    )
                )
        finally:
            server.stop()
            proxy.stop()
        engine = create_engine(direct_url)
        with engine.connect() as connection:
            ids = set(connection.execute(text("SELECT id FROM predictions")).scalars())
        engine.dispose()
        assert {p["prediction_id"] for p in before + during} <= ids


def test_kill_9_during_a_feedback_burst_loses_no_acknowledged_feedback(tmp_path: Path) -> None:
    server = start_server(tmp_path, ONE_MODEL_PROCESS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        predictions = client.post(
            "/v1/predict", json={"texts": [f"burst {n}" for n in range(50)]}
        ).json()["predictions"]
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def burst(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                prediction = predictions[(worker * 7 + n) % len(predictions)]
                body = {"prediction_id": prediction["prediction_id"], "verdict": "correct",
                        "idempotency_key": f"{worker}-{n}-{uuid.uuid4().hex}"}  # fmt: skip
                n += 1
                try:
                    response = client.post("/v1/feedback", json=body)
                except httpx.HTTPError:
                    return
                if response.status_code == 201:
                    with lock:
                        acknowledged.append(response.json()["feedback_id"])

    threads = [threading.Thread(target=burst, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(acknowledged) >= 100, 60)
    server.kill_hard()  # SIGKILL to every process: no shutdown hooks, no flush
    server.stop()  # closes its log
    stop.set()
    for thread in threads:
        thread.join(15)
    (tmp_path / "again").mkdir()
    restarted = start_server(
        tmp_path / "again", {"SENTILOOP_HOME": str(tmp_path / "home"), **ONE_MODEL_PROCESS}
    )
    try:
        assert httpx.get(f"{restarted.url}/readyz").status_code == 200
    finally:
        restarted.stop()
    with sqlite3.connect(tmp_path / "home" / "sentiloop.db") as connection:
        stored = {row[0] for row in connection.execute("SELECT id FROM feedback")}
    missing = set(acknowledged) - stored
    assert len(acknowledged) >= 100 and missing == set()


def test_workers_stop_when_the_arbiter_is_killed(tmp_path: Path) -> None:
    """`sentiloop serve` SIGKILLed (the out-of-memory killer) left its API worker and
    model processes answering on the port, so the next start could not bind."""
    import os
    import signal
    import socket

    import psutil

    server = start_server(tmp_path, {})
    try:
        family = psutil.Process(server.process.pid).children(recursive=True)
        assert family, "no workers"
        os.kill(server.process.pid, signal.SIGKILL)

        def port_free() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", server.port)) != 0

        assert wait_until(port_free, 30), server.log_tail()
        assert wait_until(lambda: not any(p.is_running() for p in family), 30), [
            p.pid for p in family if p.is_running()
        ]
    finally:
        server.stop()
