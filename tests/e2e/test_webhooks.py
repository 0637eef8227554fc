"""CRM webhooks on a real server: a signed Zendesk comment acknowledged at once and
scored under its ticket's id, its label written back as a tag to a fake Zendesk
through its 429 and 500s, a write-back Zendesk refuses dead-lettered and replayed,
a retried delivery stored and scored once, bad signatures refused, unsupported
events acknowledged and counted, a Salesforce outbound message acknowledged in SOAP
and scored under its case (once, however often delivered; refused with a bad token
or from another org), a CSAT rating stored as feedback once, pending events scored
after a restart and rows past their retention deleted at start."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from core import database
from sentiloop.cli import app
from storage import inbox, outbox
from storage.models import WriteBackOutbox
from tests.e2e.conftest import start_server
from tests.fakes.crm import DEFAULT_FAILURES, FakeZendesk
from tests.support import ServerProcess, wait_until
from tests.unit.test_connectors import hubspot_events, zendesk_event
from tests.unit.test_salesforce_connector import ORG_ID, outbound_message

pytestmark = pytest.mark.slow

ZENDESK_SECRET = "dGhpcyBpcyB0aGUgWmVuZGVzayBzZWNyZXQ="
HUBSPOT_SECRET = "hubspot-client-secret-0c1d"
SALESFORCE_TOKEN = "e2e-salesforce-token-4Fq9Lw2Zr8Xc6Vb1"
# Zendesk's CSAT by trigger: "Satisfaction is Bad/Good" sends the README's body.
CSAT_RULE = {
    "event_type": "satisfaction_rating",
    "value": "$.satisfaction_rating.score",
    "labels": {"bad": "negative", "good": "positive"},
}


ZENDESK_EMAIL, ZENDESK_TOKEN = "bot@acme.test", "zd-api-token-e2e"


def server_env(tiny_model_tag: str, zendesk: FakeZendesk) -> dict[str, str]:
    return {
        "SENTILOOP_MODEL_TAG": tiny_model_tag,
        "SENTILOOP_MODEL_PROCESSES": "1",
        "SENTILOOP_WEBHOOK_SECRET_ZENDESK": ZENDESK_SECRET,
        "SENTILOOP_WEBHOOK_SECRET_HUBSPOT": HUBSPOT_SECRET,
        "SENTILOOP_WEBHOOK_INBOX_POLL_INTERVAL_S": "0.5",
        "SENTILOOP_WEBHOOK_SECRET_SALESFORCE": SALESFORCE_TOKEN,
        "SENTILOOP_WEBHOOK_SALESFORCE_ORGANIZATION_ID": ORG_ID[:15],
        "SENTILOOP_WEBHOOK_FEEDBACK": json.dumps({"zendesk": [CSAT_RULE]}),
        # Labels written back to the fake Zendesk (tests/fakes/crm.py).
        "SENTILOOP_WRITEBACK_ZENDESK_URL": zendesk.url,
        "SENTILOOP_WRITEBACK_ZENDESK_EMAIL": ZENDESK_EMAIL,
        "SENTILOOP_WRITEBACK_ZENDESK_API_TOKEN": ZENDESK_TOKEN,
        "SENTILOOP_WRITEBACK_RETRY_BASE_S": "0.2",
    }


@pytest.fixture(scope="module")
def fake_zendesk() -> Iterator[FakeZendesk]:
    """Zendesk's API for the write-back: a real local server, up before sentiloop."""
    with FakeZendesk(email=ZENDESK_EMAIL, token=ZENDESK_TOKEN, failures=()) as fake:
        yield fake


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_tag: str, fake_zendesk: FakeZendesk
) -> Iterator[tuple[ServerProcess, Path]]:
    """One server for the webhook tests (SQLite, the tiny model), and its home."""
    tmp = tmp_path_factory.mktemp("webhooks")
    server = start_server(tmp, server_env(tiny_model_tag, fake_zendesk))
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
    # Answered from the inbox, not after scoring (a model call under load can take
    # seconds): with the model processes frozen, nothing can be scored, and the
    # comment is acknowledged all the same, waiting in the inbox.
    assert wait_until(lambda: len(server.model_processes()) == 1)  # SENTILOOP_MODEL_PROCESSES
    frozen = server.model_processes()
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = post_zendesk(server, comment_event(ticket, "The parcel arrived broken. Awful."))
        answered_s = time.monotonic() - started
        inbox = rows(home, "SELECT status FROM webhook_inbox WHERE external_id = ?", ticket)
        scored = predictions_of(home, ticket)
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)
    assert response.status_code == 202, response.text
    assert response.json() == {"stored": 1, "duplicates": 0, "ignored": 0}
    assert answered_s < 5 and inbox == [("pending",)] and scored == [], (answered_s, inbox)
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


def test_a_scored_comment_tags_its_zendesk_ticket_after_a_429_and_two_500s(
    served: tuple[ServerProcess, Path], fake_zendesk: FakeZendesk
) -> None:
    """The label is written back where agents work: a tag added to the ticket's own
    (Zendesk's PUT .../tags), after Zendesk answered 429 with Retry-After once and
    500 twice; the retry, the Retry-After and the add-not-replace all show here."""
    server, home = served
    ticket = str(uuid.uuid4().int % 10**9)  # Zendesk ticket ids are numbers
    fake_zendesk.tickets[ticket] = {"vip", "billing"}
    fake_zendesk.fail_next(DEFAULT_FAILURES, only=f"/tickets/{ticket}/")
    response = post_zendesk(server, comment_event(ticket, "The parcel arrived broken. Awful."))
    assert response.status_code == 202, response.text
    assert wait_until(lambda: len(predictions_of(home, ticket)) == 1, 30), server.log_tail()
    [(prediction_id, label)] = predictions_of(home, ticket)
    outbox_row = "SELECT status, attempts, last_status, prediction_id FROM writeback_outbox "
    assert wait_until(
        lambda: (
            [r[0] for r in rows(home, outbox_row + "WHERE external_id = ?", ticket)] == ["done"]
        ),
        30,
    ), (fake_zendesk.received, server.log_tail())
    assert rows(home, outbox_row + "WHERE external_id = ?", ticket) == [
        ("done", 4, 200, prediction_id)
    ]
    assert fake_zendesk.tickets[ticket] == {"vip", "billing", f"sentiment_{label}"}
    sent = [r for r in fake_zendesk.received if f"/tickets/{ticket}/" in r.path]
    assert [(r.method, r.status) for r in sent] == [
        ("PUT", 429), ("PUT", 500), ("PUT", 500), ("PUT", 200), ("DELETE", 200),
    ]  # fmt: skip
    assert sent[1].at - sent[0].at >= 1.0 and not any(r.early for r in sent)


def test_a_write_back_zendesk_refuses_is_a_dead_letter_counted_and_replayed(
    served: tuple[ServerProcess, Path], fake_zendesk: FakeZendesk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ticket Zendesk does not know (404) is dead at once, shows in the dead-letter
    gauge, and ``sentiloop writeback replay`` has the running server send it."""
    server, home = served
    ticket = str(uuid.uuid4().int % 10**9)
    fake_zendesk.fail_next([])
    assert post_zendesk(server, comment_event(ticket, "Thanks, all sorted!")).status_code == 202
    dead_rows = "SELECT id, last_status FROM writeback_outbox WHERE status = 'dead'"

    def dead_gauge() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        prefix = 'sentiloop_writeback_outbox{status="dead"}'
        return max(
            (float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)),
            default=-1.0,
        )

    def dead_here() -> list[tuple[Any, ...]]:
        return rows(home, dead_rows + " AND external_id = ?", ticket)

    assert wait_until(lambda: len(dead_here()) == 1, 30), server.log_tail()
    [(row_id, status)] = dead_here()
    assert status == 404
    assert wait_until(lambda: dead_gauge() == len(rows(home, dead_rows)), 10)
    fake_zendesk.tickets[ticket] = {"vip"}  # the ticket is there now
    monkeypatch.setenv("SENTILOOP_HOME", str(home))
    replayed = CliRunner().invoke(app, ["writeback", "replay", str(row_id)])
    assert replayed.exit_code == 0, replayed.output
    assert wait_until(lambda: fake_zendesk.tickets[ticket] != {"vip"}, 10)
    [(label,)] = rows(home, "SELECT label FROM writeback_outbox WHERE id = ?", row_id)
    assert fake_zendesk.tickets[ticket] == {"vip", f"sentiment_{label}"}


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


def post_salesforce(
    server: ServerProcess, body: bytes, token: str = SALESFORCE_TOKEN
) -> httpx.Response:
    """As Salesforce posts an outbound message: SOAP 1.1, the token in the URL."""
    return httpx.post(
        f"{server.url}/v1/webhooks/salesforce",
        params={"token": token},
        content=body,
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        timeout=30,
    )


def case_message(case_id: str, notification_id: str) -> bytes:
    record = {
        "notification": notification_id,
        "Id": case_id,
        "Subject": "Refund still missing",
        "Description": "I returned it three weeks ago and nobody answers. Terrible.",
    }
    return outbound_message([record])


def acknowledged(response: httpx.Response) -> bool:
    """Salesforce's acknowledgement, as its outbound messaging WSDL defines it."""
    outbound = "{http://soap.sforce.com/2005/09/outbound}"
    root = ElementTree.fromstring(response.content)
    return (
        response.status_code == 200
        and response.headers["content-type"].startswith("text/xml")
        and root.findtext(f".//{outbound}notificationsResponse/{outbound}Ack") == "true"
    )


def test_a_salesforce_outbound_message_is_acknowledged_and_scored_under_its_case(
    served: tuple[ServerProcess, Path],
) -> None:
    server, home = served
    case_id = f"500{uuid.uuid4().hex[:15]}"
    response = post_salesforce(server, case_message(case_id, f"04l{uuid.uuid4().hex[:15]}"))
    assert acknowledged(response), (response.status_code, response.text)
    assert wait_until(lambda: len(predictions_of(home, case_id, "salesforce")) == 1, 30)
    [(text,)] = rows(
        home, "SELECT text FROM predictions WHERE external_id = ? AND external_source = ?",
        case_id, "salesforce",
    )  # fmt: skip
    assert text is not None and text.startswith("Refund still missing\n")
    # Never logged: no message names it, and BentoML's access log (when on) writes
    # the path without the query.
    assert SALESFORCE_TOKEN not in server.log_path.read_text(errors="replace")


def test_a_replayed_salesforce_notification_is_acknowledged_and_scored_once(
    served: tuple[ServerProcess, Path],
) -> None:
    """Salesforce delivers a message at least once: each delivery is acknowledged
    (else it is sent again for a day), its notification scored once."""
    server, home = served
    case_id = f"500{uuid.uuid4().hex[:15]}"
    message = case_message(case_id, f"04l{uuid.uuid4().hex[:15]}")
    assert acknowledged(post_salesforce(server, message))
    assert acknowledged(post_salesforce(server, message))
    assert wait_until(lambda: len(predictions_of(home, case_id, "salesforce")) == 1, 30)
    time.sleep(1.5)  # three polls of the inbox: nothing scores it again
    assert len(predictions_of(home, case_id, "salesforce")) == 1
    assert rows(home, "SELECT count(*) FROM webhook_inbox WHERE external_id = ?", case_id) == [(1,)]


@pytest.mark.parametrize(
    ("token", "organization_id", "status", "field"),
    [
        ("not-the-token-" + "x" * 24, ORG_ID, 401, "token"),
        (SALESFORCE_TOKEN, "00D5e000000ZZZZEAG", 403, "OrganizationId"),
    ],
    ids=["bad-token", "other-org"],
)
def test_salesforce_refuses_a_bad_token_and_another_org_with_a_soap_fault(
    served: tuple[ServerProcess, Path], token: str, organization_id: str, status: int, field: str
) -> None:
    server, home = served
    case_id = f"500{uuid.uuid4().hex[:15]}"
    record = {"notification": f"04l{uuid.uuid4().hex[:15]}", "Id": case_id, "Subject": "Hi"}
    response = post_salesforce(
        server, outbound_message([record], organization_id=organization_id), token=token
    )
    assert response.status_code == status, response.text
    fault = ElementTree.fromstring(response.content).findtext(".//faultstring") or ""
    assert f"(field: {field})" in fault and SALESFORCE_TOKEN not in fault
    assert rows(home, "SELECT count(*) FROM webhook_inbox WHERE external_id = ?", case_id) == [(0,)]


def post_csat(server: ServerProcess, ticket: str, score: str, invocation: str) -> httpx.Response:
    """A Zendesk trigger's delivery: the README's body, signed, with its invocation id."""
    body = json.dumps(
        {
            "type": "satisfaction_rating",
            "detail": {"id": ticket},
            "satisfaction_rating": {"score": score},
        }
    ).encode()
    headers = {**zendesk_headers(body), "X-Zendesk-Webhook-Invocation-Id": invocation}
    return httpx.post(
        f"{server.url}/v1/webhooks/zendesk", content=body, headers=headers, timeout=30
    )


def test_a_csat_rating_is_stored_as_feedback_on_its_ticket_once(
    served: tuple[ServerProcess, Path], fake_zendesk: FakeZendesk
) -> None:
    server, home = served
    ticket = str(uuid.uuid4().int % 10**9)  # Zendesk ticket ids are numbers
    fake_zendesk.tickets[ticket] = set()  # its label is written back there
    assert post_zendesk(server, comment_event(ticket, "Where is my refund?")).status_code == 202
    assert wait_until(lambda: len(predictions_of(home, ticket)) == 1, 30)
    [(prediction_id, _)] = predictions_of(home, ticket)
    invocation = str(uuid.uuid4().int % 10**10)
    response = post_csat(server, ticket, "bad", invocation)
    assert response.status_code == 202, response.text
    assert response.json() == {"stored": 1, "duplicates": 0, "ignored": 0}

    def feedback() -> list[tuple[Any, ...]]:
        return rows(
            home,
            "SELECT prediction_id, label, source, idempotency_key FROM feedback "
            "WHERE prediction_id = ?",
            prediction_id,
        )

    assert wait_until(lambda: len(feedback()) == 1, 30), server.log_tail()
    assert feedback() == [(prediction_id, "negative", "zendesk", f"webhook:zendesk:{invocation}")]
    query = (
        "SELECT kind, label, signal, status, prediction_id FROM webhook_inbox WHERE event_id = ?"
    )
    assert wait_until(
        lambda: (
            rows(home, query, invocation)
            == [("feedback", "negative", "bad", "done", prediction_id)]
        ),
        10,
    ), rows(home, query, invocation)
    # Zendesk retries the invocation: acknowledged, stored once.
    again = post_csat(server, ticket, "bad", invocation)
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    time.sleep(1.5)  # three polls of the inbox
    assert len(feedback()) == 1


def test_events_left_pending_are_scored_after_a_restart(
    served: tuple[ServerProcess, Path], tiny_model_tag: str, fake_zendesk: FakeZendesk
) -> None:
    """The module's server stopped between answering a delivery and scoring it leaves
    the event pending in the inbox (put there directly here): the next start scores
    it, and deletes the handled rows past SENTILOOP_WEBHOOK_RETENTION_DAYS (an event
    scored and a label sent 40 days ago). Runs last: it restarts the module's server
    (its caches warm, so it starts as a restarted server does)."""
    server, home = served
    server.stop()
    engine = database.make_engine(f"sqlite:///{home / 'sentiloop.db'}")
    long_ago = datetime.now(UTC) - timedelta(days=40)
    with database.make_session_factory(engine)() as session:
        entries = [
            inbox.InboxEntry(
                connector="zendesk",
                event_id=event_id,
                event_type="zen:event-type:ticket.comment_added",
                text="Still waiting for my refund, very disappointed.",
                external_id=ticket,
            )
            for event_id, ticket in (("left-pending", "T-restart"), ("old-done", "T-old"))
        ]
        assert inbox.add(session=session, entries=entries[1:], now=long_ago) == 1
        session.commit()
        [old] = inbox.claim(session=session, limit=1, lease_s=60)
        write = outbox.WriteBack(
            connector="zendesk",
            event_id="old-done",
            external_id="T-old",
            prediction_id="p-old",
            label="negative",
            confidence=0.9,
            model_version="m",
            template_version="v1",
        )
        inbox.mark_done(
            session=session, item_id=old.id, prediction_id="p-old", writeback=write, now=long_ago
        )
        session.execute(
            update(WriteBackOutbox)
            .where(WriteBackOutbox.event_id == "old-done")
            .values(status=outbox.DONE, sent_at=long_ago)
        )
        assert inbox.add(session=session, entries=entries[:1]) == 1
        session.commit()
    engine.dispose()
    restarted = start_server(home.parent, server_env(tiny_model_tag, fake_zendesk))
    try:
        assert wait_until(lambda: len(predictions_of(home, "T-restart")) == 1, 30)
        assert wait_until(
            lambda: (
                rows(home, "SELECT status FROM webhook_inbox WHERE event_id = 'left-pending'")
                == [("done",)]
            ),
            10,
        )
        gone = "SELECT count(*) FROM {} WHERE event_id = 'old-done'"
        assert wait_until(
            lambda: (
                rows(home, gone.format("webhook_inbox")) == [(0,)]
                and rows(home, gone.format("writeback_outbox")) == [(0,)]
            ),
            10,
        ), restarted.log_tail()
    finally:
        restarted.stop()
