"""A real server on PostgreSQL: every prediction and feedback lands in it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from service.http.auth import hash_key
from tests.e2e.conftest import start_server
from tests.support import throwaway_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

KEY = "slk_pg_test"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_postgres_server_logs_every_prediction_and_feedback(tmp_path: Path) -> None:
    with throwaway_postgres() as url:
        ring = json.dumps(
            [{"name": "crm", "sha256": hash_key(KEY), "scopes": ["predict", "feedback"]}]
        )
        env = {"DATABASE_URL": url, "SENTILOOP_TEXT_STORAGE": "raw", "SENTILOOP_API_KEYS": ring}
        server = start_server(tmp_path, env)  # PostgreSQL: authentication is on by default
        try:
            texts = [f"postgres message {n}" for n in range(120)]
            ids = []
            for start in range(0, len(texts), 40):
                response = httpx.post(
                    f"{server.url}/v1/predict",
                    json={"texts": texts[start : start + 40]},
                    headers=AUTH,
                    timeout=60,
                )
                assert response.status_code == 200, response.text
                ids += [p["prediction_id"] for p in response.json()["predictions"]]
            feedback = httpx.post(
                f"{server.url}/v1/feedback",
                json={"prediction_id": ids[0], "label": "positive", "idempotency_key": "pg-1"},
                headers=AUTH,
                timeout=30,
            )
            assert feedback.status_code == 201, feedback.text
        finally:
            server.stop()  # SIGTERM right after the last request
        engine = create_engine(url)
        with engine.connect() as connection:
            logged = connection.execute(text("SELECT count(*) FROM predictions")).scalar_one()
            stored = connection.execute(
                text(
                    "SELECT f.label, p.text FROM feedback f "
                    "JOIN predictions p ON p.id = f.prediction_id"
                )
            ).all()
        engine.dispose()
        assert logged == len(ids)
        assert stored == [("positive", "postgres message 0")]
