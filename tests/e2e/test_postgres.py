"""A real server on PostgreSQL: every prediction and feedback lands in it, and a CRM's
webhooks work end to end on it (a signed Zendesk comment scored once under its
ticket however often delivered, its label tagged on a fake Zendesk through 429 and
500s, a CSAT rating stored as feedback)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from service.http.auth import hash_key
from tests.e2e.conftest import ONE_MODEL_PROCESS, start_server
from tests.e2e.test_webhooks import (
    CSAT_RULE,
    ZENDESK_EMAIL,
    ZENDESK_SECRET,
    ZENDESK_TOKEN,
    comment_event,
    post_csat,
    post_zendesk,
)
from tests.fakes.crm import DEFAULT_FAILURES, FakeZendesk
from tests.support import ServerProcess, throwaway_postgres, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

KEY = "slk_pg_test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def fake_zendesk() -> Iterator[FakeZendesk]:
    """Zendesk's API for the write-back: a real local server, up before sentiloop."""
    with FakeZendesk(email=ZENDESK_EMAIL, token=ZENDESK_TOKEN, failures=()) as fake:
        yield fake


@pytest.fixture(scope="module")
def pg_served(
    tmp_path_factory: pytest.TempPathFactory, fake_zendesk: FakeZendesk
) -> Iterator[tuple[ServerProcess, str]]:
    """One server on a throwaway PostgreSQL database, with the Zendesk webhook, its
    CSAT rule and the write-back to the fake Zendesk on; and the database's URL."""
    with throwaway_postgres() as url:
        ring = json.dumps(
            [{"name": "crm", "sha256": hash_key(KEY), "scopes": ["predict", "feedback"]}]
        )
        env = {
            "DATABASE_URL": url,
            "SENTILOOP_TEXT_STORAGE": "raw",
            "SENTILOOP_API_KEYS": ring,  # PostgreSQL: authentication is on by default
            "SENTILOOP_WEBHOOK_SECRET_ZENDESK": ZENDESK_SECRET,
            "SENTILOOP_WEBHOOK_INBOX_POLL_INTERVAL_S": "0.5",
            "SENTILOOP_WEBHOOK_FEEDBACK": json.dumps({"zendesk": [CSAT_RULE]}),
            "SENTILOOP_WRITEBACK_ZENDESK_URL": fake_zendesk.url,
            "SENTILOOP_WRITEBACK_ZENDESK_EMAIL": ZENDESK_EMAIL,
            "SENTILOOP_WRITEBACK_ZENDESK_API_TOKEN": ZENDESK_TOKEN,
            "SENTILOOP_WRITEBACK_RETRY_BASE_S": "0.2",
            **ONE_MODEL_PROCESS,
        }
        server = start_server(tmp_path_factory.mktemp("postgres"), env)
        try:
            yield server, url
        finally:
            server.stop()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params).all()]
    finally:
        engine.dispose()


def test_a_zendesk_comment_is_scored_once_tagged_back_and_its_csat_stored_on_postgres(
    pg_served: tuple[ServerProcess, str], fake_zendesk: FakeZendesk
) -> None:
    server, url = pg_served
    ticket = str(uuid.uuid4().int % 10**9)  # Zendesk ticket ids are numbers
    fake_zendesk.tickets[ticket] = {"vip", "billing"}
    fake_zendesk.fail_next(DEFAULT_FAILURES, only=f"/tickets/{ticket}/")  # 429, 500, 500
    event = comment_event(ticket, "Das Paket kam kaputt an. 😡 Furchtbar.")
    first = post_zendesk(server, event)
    assert first.status_code == 202, first.text
    assert first.json() == {"stored": 1, "duplicates": 0, "ignored": 0}
    again = post_zendesk(server, event)  # Zendesk's retry: signed anew, same event id
    assert again.status_code == 200, again.text
    assert again.json() == {"stored": 0, "duplicates": 1, "ignored": 0}

    def scored() -> list[tuple[Any, ...]]:
        return query(
            url,
            "SELECT id, label, text FROM predictions "
            "WHERE external_id = :ticket AND external_source = 'zendesk'",
            ticket=ticket,
        )

    assert wait_until(lambda: len(scored()) >= 1, 60), server.log_tail()
    time.sleep(1.5)  # three polls of the inbox: nothing scores it again
    [(prediction_id, label, logged)] = scored()
    assert logged == "Das Paket kam kaputt an. 😡 Furchtbar."
    assert query(
        url,
        "SELECT status, prediction_id FROM webhook_inbox WHERE event_id = :event",
        event=event["id"],
    ) == [("done", prediction_id)]

    # The label tagged on the ticket, added to its tags, after a 429 and two 500s.
    outbox_row = (
        "SELECT status, attempts, last_status, label FROM writeback_outbox "
        "WHERE external_id = :ticket"
    )
    assert wait_until(
        lambda: [row[0] for row in query(url, outbox_row, ticket=ticket)] == ["done"], 30
    ), (fake_zendesk.received, server.log_tail())
    assert query(url, outbox_row, ticket=ticket) == [("done", 4, 200, label)]
    assert fake_zendesk.tickets[ticket] == {"vip", "billing", f"sentiment_{label}"}
    sent = [r for r in fake_zendesk.received if f"/tickets/{ticket}/" in r.path]
    assert [(r.method, r.status) for r in sent] == [
        ("PUT", 429), ("PUT", 500), ("PUT", 500), ("PUT", 200), ("DELETE", 200),
    ]  # fmt: skip
    assert sent[1].at - sent[0].at >= 1.0 and not any(r.early for r in sent)

    # A satisfaction rating, by trigger: stored as feedback on the ticket's prediction.
    invocation = str(uuid.uuid4().int % 10**10)
    rated = post_csat(server, ticket, "bad", invocation)
    assert rated.status_code == 202, rated.text
    feedback = (
        "SELECT prediction_id, label, source, idempotency_key FROM feedback "
        "WHERE prediction_id = :prediction"
    )
    assert wait_until(lambda: len(query(url, feedback, prediction=prediction_id)) == 1, 30), (
        server.log_tail()
    )
    assert query(url, feedback, prediction=prediction_id) == [
        (prediction_id, "negative", "zendesk", f"webhook:zendesk:{invocation}")
    ]
    assert wait_until(
        lambda: (
            query(
                url,
                "SELECT kind, label, signal, status FROM webhook_inbox WHERE event_id = :event",
                event=invocation,
            )
            == [("feedback", "negative", "bad", "done")]
        ),
        10,
    )


def test_postgres_server_logs_every_prediction_and_feedback(
    pg_served: tuple[ServerProcess, str],
) -> None:
    """Runs last: it stops the module's server right after its last request."""
    server, url = pg_served
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
    server.stop()  # SIGTERM right after the last request
    logged = query(url, "SELECT count(*) FROM predictions WHERE text LIKE 'postgres message %'")
    stored = query(
        url,
        "SELECT f.label, p.text FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
        "WHERE f.idempotency_key = 'pg-1'",
    )
    assert logged == [(len(ids),)]
    assert stored == [("positive", "postgres message 0")]
