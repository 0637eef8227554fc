"""CRM webhooks on a real server: a signed Zendesk comment acknowledged at once and
scored under its ticket's id, a retried delivery stored and scored once, bad
signatures refused, unsupported events acknowledged and counted, pending events
scored after a restart."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from core import database
from storage import inbox
from tests.e2e.conftest import start_server
from tests.support import ServerProcess, wait_until
from tests.unit.test_connectors import hubspot_events, zendesk_event

pytestmark = pytest.mark.slow

ZENDESK_SECRET = "dGhpcyBpcyB0aGUgWmVuZGVzayBzZWNyZXQ="
HUBSPOT_SECRET = "hubspot-client-secret-0c1d"


def server_env(tiny_model_tag: str) -> dict[str, str]:
    return {
        "SENTILOOP_MODEL_TAG": tiny_model_tag,
        "SENTILOOP_MODEL_PROCESSES": "1",
        "SENTILOOP_WEBHOOK_SECRET_ZENDESK": ZENDESK_SECRET,
        "SENTILOOP_WEBHOOK_SECRET_HUBSPOT": HUBSPOT_SECRET,
        "SENTILOOP_WEBHOOK_INBOX_POLL_INTERVAL_S": "0.5",
    }


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_tag: str
) -> Iterator[tuple[ServerProcess, Path]]:
    """One server for the webhook tests (SQLite, the tiny model), and its home."""
    tmp = tmp_path_factory.mktemp("webhooks")
    server = start_server(tmp, server_env(tiny_model_tag))
    yield server, tmp / "home"
    server.stop()


def zendesk_headers(
    body: bytes, *, secret: str = ZENDESK_SECRET, age_s: float = 0
) -> dict[str, str]:
    """Signed as Zendesk signs: base64(HMAC-SHA256(timestamp + body))."""
    timestamp = datetime.fromtimestamp(time.time() - age_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
    }


def comment_event(ticket_id: str, text: str) -> dict[str, Any]:
    event = copy.deepcopy(zendesk_event(body=text))
    event["id"] = str(uuid.uuid4())
    event["detail"]["id"] = ticket_id
    return event


def post_zendesk(server: ServerProcess, event: dict[str, Any], **signing: Any) -> httpx.Response:
    body = json.dumps(event).encode()
    return httpx.post(
        f"{server.url}/v1/webhooks/zendesk",
        content=body,
        headers=zendesk_headers(body, **signing),
        timeout=30,
    )


def rows(home: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "sentiloop.db") as connection:
        return connection.execute(query, params).fetchall()


def predictions_of(home: Path, ticket_id: str, source: str = "zendesk") -> list[tuple[Any, ...]]:
    return rows(
        home,
        "SELECT id, label FROM predictions WHERE external_id = ? AND external_source = ?",
        ticket_id,
        source,
    )


def test_a_signed_zendesk_comment_is_acknowledged_then_scored_under_its_ticket(
    served: tuple[ServerProcess, Path],
) -> None:
    server, home = served
    ticket = f"T-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    response = post_zendesk(server, comment_event(ticket, "The parcel arrived broken. Awful."))
    answered_s = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert response.json() == {"stored": 1, "duplicates": 0, "ignored": 0}
    # Answered from the inbox, not after scoring (a model call under load can take seconds).
    assert answered_s < 5
    assert wait_until(lambda: len(predictions_of(home, ticket)) == 1, 30), server.log_tail()
    [(prediction_id, label)] = predictions_of(home, ticket)
    assert label in {"negative", "neutral", "positive"}
    assert wait_until(
        lambda: (
            rows(home, "SELECT status FROM webhook_inbox WHERE external_id = ?", ticket)
            == [("done",)]
        ),
        10,
    )
    [(kept, text, comment_id, author)] = rows(
        home,
        "SELECT prediction_id, text, comment_id, author FROM webhook_inbox WHERE external_id = ?",
        ticket,
    )
    assert (kept, text, comment_id, author) == (prediction_id, None, "10001", "8447388090494")


def test_a_retried_delivery_is_stored_once_and_scored_once(
    served: tuple[ServerProcess, Path],
) -> None:
    server, home = served
    ticket = f"T-{uuid.uuid4().hex[:8]}"
    event = comment_event(ticket, "Thank you, the replacement works perfectly.")
    assert post_zendesk(server, event).status_code == 202
    again = post_zendesk(server, event)  # Zendesk's retry: signed anew, same event id
    assert again.status_code == 200, again.text
    assert again.json() == {"stored": 0, "duplicates": 1, "ignored": 0}
    assert wait_until(lambda: len(predictions_of(home, ticket)) == 1, 30)
    time.sleep(1.5)  # three polls of the inbox: nothing scores it again
    assert len(predictions_of(home, ticket)) == 1
    assert rows(home, "SELECT count(*) FROM webhook_inbox WHERE event_id = ?", event["id"]) == [
        (1,)
    ]


@pytest.mark.parametrize(
    ("signing", "header"),
    [
        ({"secret": "not-the-secret"}, "X-Zendesk-Webhook-Signature"),
        ({"age_s": 600}, "X-Zendesk-Webhook-Signature-Timestamp"),
    ],
    ids=["wrong-secret", "old-timestamp"],
)
def test_a_bad_signature_is_refused_and_nothing_is_stored(
    served: tuple[ServerProcess, Path], signing: dict[str, Any], header: str
) -> None:
    server, home = served
    ticket = f"T-{uuid.uuid4().hex[:8]}"
    response = post_zendesk(server, comment_event(ticket, "Fine."), **signing)
    assert response.status_code == 401, response.text
    assert response.json()["field"] == header
    assert rows(home, "SELECT count(*) FROM webhook_inbox WHERE external_id = ?", ticket) == [(0,)]


def test_unsupported_events_are_acknowledged_and_counted(
    served: tuple[ServerProcess, Path],
) -> None:
    server, _ = served

    def unsupported() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        prefix = 'sentiloop_webhook_events_total{connector="zendesk",fate="unsupported"}'
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))

    before = unsupported()
    event = comment_event("T-1", "Anything")
    event["type"] = "zen:event-type:ticket.priority_changed"
    response = post_zendesk(server, event)
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 0, "duplicates": 0, "ignored": 1}
    assert unsupported() == before + 1


def test_bad_payloads_and_connectors_are_refused_with_the_reason(
    served: tuple[ServerProcess, Path],
) -> None:
    server, _ = served
    event = comment_event("T-2", "Anything")
    del event["detail"]["id"]
    missing = post_zendesk(server, event)
    assert missing.status_code == 400 and missing.json()["field"] == "detail.id"
    off = httpx.post(f"{server.url}/v1/webhooks/intercom", json={}, timeout=10)
    assert off.status_code == 404 and "SENTILOOP_WEBHOOK_SECRET_INTERCOM" in off.json()["error"]
    unknown = httpx.post(f"{server.url}/v1/webhooks/nope", json={}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["field"] == "connector"


def test_hubspot_is_checked_against_the_uri_it_called(served: tuple[ServerProcess, Path]) -> None:
    server, home = served
    events = hubspot_events()
    events[0]["objectId"] = object_id = int(time.time() * 1000)
    body = json.dumps(events).encode()
    uri = f"{server.url}/v1/webhooks/hubspot"
    timestamp = str(int(time.time() * 1000))
    digest = hmac.new(
        HUBSPOT_SECRET.encode(), b"POST" + uri.encode() + body + timestamp.encode(), hashlib.sha256
    ).digest()
    headers = {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": timestamp,
    }
    response = httpx.post(uri, content=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    assert response.json() == {"stored": 1, "duplicates": 0, "ignored": 2}
    assert wait_until(lambda: len(predictions_of(home, str(object_id), "hubspot")) == 1, 30)


def test_events_left_pending_are_scored_after_a_restart(
    served: tuple[ServerProcess, Path], tiny_model_tag: str
) -> None:
    """The module's server stopped between answering a delivery and scoring it leaves
    the event pending in the inbox (put there directly here): the next start scores
    it. Runs last: it restarts the module's server (its caches warm, so it starts as
    a restarted server does)."""
    server, home = served
    server.stop()
    engine = database.make_engine(f"sqlite:///{home / 'sentiloop.db'}")
    with database.make_session_factory(engine)() as session:
        entry = inbox.InboxEntry(
            connector="zendesk",
            event_id="left-pending",
            event_type="zen:event-type:ticket.comment_added",
            text="Still waiting for my refund, very disappointed.",
            external_id="T-restart",
        )
        assert inbox.add(session=session, entries=[entry]) == 1
        session.commit()
    engine.dispose()
    restarted = start_server(home.parent, server_env(tiny_model_tag))
    try:
        assert wait_until(lambda: len(predictions_of(home, "T-restart")) == 1, 30)
        assert wait_until(
            lambda: (
                rows(home, "SELECT status FROM webhook_inbox WHERE event_id = 'left-pending'")
                == [("done",)]
            ),
            10,
        )
    finally:
        restarted.stop()
