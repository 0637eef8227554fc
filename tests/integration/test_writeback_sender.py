"""The write-back worker against fake CRM servers (real HTTP servers on 127.0.0.1,
``tests/fakes/crm.py``) on a real database: a label written after a 429 with
Retry-After and two 500s, tags added rather than replaced, the connector paused
by a 429, a refused credential dead at once and replayed, the same webhook-id on
every attempt of a callback, credentials never logged."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connectors.writeback import (
    GenericWriteBack,
    HubSpotWriteBack,
    WriteBackTarget,
    ZendeskWriteBack,
)
from service.http.writeback import WriteBackSender
from service.metrics import WebhookMetrics
from storage import inbox, outbox
from storage.models import WriteBackOutbox
from tests.fakes.crm import FakeCallback, FakeHubSpot, FakeZendesk

EMAIL, TOKEN = "bot@acme.test", "zd-api-t0ken-never-logged"
HUBSPOT_TOKEN = "pat-na1-never-logged"
CALLBACK_SECRET = "whsec_" + base64.b64encode(b"callback secret for the tests..").decode()
# The store runs on both databases in test_writeback_outbox.py; here the first test only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def zendesk() -> Iterator[FakeZendesk]:
    with FakeZendesk(email=EMAIL, token=TOKEN) as fake:
        yield fake


def zendesk_target(fake: FakeZendesk, token: str = TOKEN) -> ZendeskWriteBack:
    return ZendeskWriteBack(
        fake.url,
        email=EMAIL,
        api_token=token,
        tag_prefix="sentiment_",
        remove_other_tags=True,
        custom_field_id=None,
    )


def sender(
    sessions: sessionmaker[Session], metrics: WebhookMetrics, *targets: WriteBackTarget
) -> WriteBackSender:
    return WriteBackSender(
        sessions,
        {target.connector: target for target in targets},
        metrics,
        poll_interval_s=0.2,
        max_attempts=5,
        retry_base_s=0.05,
        timeout_s=5,
    )


def scored(
    sessions: sessionmaker[Session],
    ticket: str,
    label: str = "negative",
    connector: str = "zendesk",
    event_id: str | None = None,
) -> int:
    """An inbox event scored, its write-back added as the inbox worker adds it."""
    event_id = event_id or f"e-{connector}-{ticket}-{label}"
    with sessions() as session:
        inbox.add(
            session=session,
            entries=[
                inbox.InboxEntry(
                    connector=connector,
                    event_id=event_id,
                    event_type="comment",
                    text="x",
                    external_id=ticket,
                )
            ],
        )
        session.commit()
        [item] = inbox.claim(session=session, limit=1, lease_s=60)
        inbox.mark_done(
            session=session,
            item_id=item.id,
            prediction_id=f"p-{event_id}",
            writeback=outbox.WriteBack(
                connector=connector,
                event_id=event_id,
                external_id=ticket,
                prediction_id=f"p-{event_id}",
                label=label,
                confidence=0.9,
                model_version="m",
                template_version="v2",
            ),
        )
        row_id = session.scalar(
            select(WriteBackOutbox.id).where(WriteBackOutbox.event_id == event_id)
        )
    assert row_id is not None
    return row_id


def row(sessions: sessionmaker[Session], row_id: int) -> WriteBackOutbox:
    with sessions() as session:
        found = session.get(WriteBackOutbox, row_id)
    assert found is not None
    return found


def run_until(
    worker: WriteBackSender,
    condition: Callable[[], bool],
    timeout_s: float = 20,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Run the worker's task on an event loop until ``condition`` holds."""

    async def main() -> None:
        worker.start()
        deadline = time.monotonic() + timeout_s
        try:
            while not await asyncio.to_thread(condition):
                assert time.monotonic() < deadline, "the write-back was not done in time"
                if meanwhile is not None:
                    await asyncio.to_thread(meanwhile)
                await asyncio.sleep(0.05)
        finally:
            await worker.aclose()

    asyncio.run(main())


def done(sessions: sessionmaker[Session], *row_ids: int) -> Callable[[], bool]:
    return lambda: all(row(sessions, r).status != "pending" for r in row_ids)


def sample(metrics: WebhookMetrics, connector: str, result: str) -> float:
    return float(metrics.writebacks.labels(connector, result)._value.get())


def test_a_label_tag_is_added_after_a_429_and_two_500s(
    sessions: sessionmaker[Session],
    webhook_metrics: WebhookMetrics,
    zendesk: FakeZendesk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Runs on SQLite and PostgreSQL."""
    zendesk.tickets["5158"] = {"vip", "billing", "sentiment_positive"}
    row_id = scored(sessions, "5158", "negative")
    sent_before = sample(webhook_metrics, "zendesk", "sent")
    caplog.set_level(logging.INFO)
    run_until(sender(sessions, webhook_metrics, zendesk_target(zendesk)), done(sessions, row_id))
    # The agents' tags kept; the older label's tag gone; the new label's tag added.
    assert zendesk.tickets["5158"] == {"vip", "billing", "sentiment_negative"}
    assert [(r.method, r.status) for r in zendesk.received] == [
        ("PUT", 429), ("PUT", 500), ("PUT", 500), ("PUT", 200), ("DELETE", 200),
    ]  # fmt: skip
    # Retry-After honoured: nothing sent before the second it asked for.
    limited, after = zendesk.received[0], zendesk.received[1]
    assert after.at - limited.at >= 1.0 and not any(r.early for r in zendesk.received)
    sent = row(sessions, row_id)
    assert (sent.status, sent.attempts, sent.last_status) == ("done", 4, 200)
    assert sent.last_error is None  # the 500s' error went with the success
    assert sample(webhook_metrics, "zendesk", "sent") == sent_before + 1
    assert "retried in" in caplog.text and TOKEN not in caplog.text
    assert base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode() not in caplog.text


@sqlite_only
def test_a_429_pauses_the_connector_until_its_retry_after(
    sessions: sessionmaker[Session],
    webhook_metrics: WebhookMetrics,
    zendesk: FakeZendesk,
) -> None:
    """A second ticket's label, scored while Zendesk limits the rate, waits for the
    Retry-After too (sent at once, it would meet another 429)."""
    zendesk.fail_next([(429, {"Retry-After": "2"})])
    zendesk.tickets["1"] = set()
    zendesk.tickets["2"] = set()
    first = scored(sessions, "1")
    second: list[int] = []

    def add_second_once_limited() -> None:
        if not second and zendesk.statuses() == [429]:
            second.append(scored(sessions, "2"))

    worker = sender(sessions, webhook_metrics, zendesk_target(zendesk))
    run_until(
        worker,
        lambda: bool(second) and done(sessions, first, second[0])(),
        meanwhile=add_second_once_limited,
    )
    assert not any(r.early for r in zendesk.received), zendesk.received
    limited_at = zendesk.received[0].at
    assert all(r.at - limited_at >= 2.0 for r in zendesk.received[1:])
    assert zendesk.tickets["1"] == zendesk.tickets["2"] == {"sentiment_negative"}


@sqlite_only
def test_a_refused_credential_is_dead_at_once_then_replayed(
    sessions: sessionmaker[Session],
    webhook_metrics: WebhookMetrics,
    zendesk: FakeZendesk,
) -> None:
    zendesk.fail_next([])
    zendesk.tickets["77"] = {"vip"}
    row_id = scored(sessions, "77", "neutral")
    dead_before = sample(webhook_metrics, "zendesk", "dead")
    wrong = sender(sessions, webhook_metrics, zendesk_target(zendesk, token="revoked"))
    run_until(wrong, done(sessions, row_id))
    dead = row(sessions, row_id)
    assert (dead.status, dead.attempts, dead.last_status) == ("dead", 1, 401)
    assert dead.last_error is not None and "HTTP 401" in dead.last_error
    assert zendesk.statuses() == [401]  # not retried: the same request gets the same answer
    assert sample(webhook_metrics, "zendesk", "dead") == dead_before + 1
    assert webhook_metrics.outbox.labels("dead")._value.get() == 1
    # The operator fixes the token and replays the dead letter (sentiloop writeback replay).
    with sessions() as session:
        assert outbox.replay(session=session) == [row_id]
    fixed = sender(sessions, webhook_metrics, zendesk_target(zendesk))
    run_until(fixed, done(sessions, row_id))
    assert row(sessions, row_id).status == "done"
    assert zendesk.tickets["77"] == {"vip", "sentiment_neutral"}


@sqlite_only
def test_hubspot_ticket_property_is_set_and_an_unknown_property_is_dead(
    sessions: sessionmaker[Session], webhook_metrics: WebhookMetrics
) -> None:
    with FakeHubSpot(token=HUBSPOT_TOKEN) as hubspot:
        hubspot.tickets["16491"] = {"subject": "Broken parcel", "content": "..."}
        row_id = scored(sessions, "16491", "negative", connector="hubspot")
        target = HubSpotWriteBack(
            hubspot.url, token=HUBSPOT_TOKEN, property_name="sentiloop_sentiment"
        )
        run_until(sender(sessions, webhook_metrics, target), done(sessions, row_id))
        assert hubspot.statuses() == [429, 500, 500, 200]
        assert hubspot.tickets["16491"]["sentiloop_sentiment"] == "negative"
        assert hubspot.tickets["16491"]["subject"] == "Broken parcel"
        # A property the account does not define: 400, dead at once with HubSpot's reason.
        undefined = HubSpotWriteBack(hubspot.url, token=HUBSPOT_TOKEN, property_name="mood")
        other = scored(sessions, "16491", "positive", connector="hubspot")
        run_until(sender(sessions, webhook_metrics, undefined), done(sessions, other))
        dead = row(sessions, other)
        assert (dead.status, dead.last_status) == ("dead", 400)
        assert dead.last_error is not None and "does not exist" in dead.last_error


@sqlite_only
def test_a_callback_keeps_its_webhook_id_across_retries(
    sessions: sessionmaker[Session], webhook_metrics: WebhookMetrics
) -> None:
    failures = [(500, {}), (503, {"Retry-After": "1"})]
    with FakeCallback(secret=CALLBACK_SECRET, failures=failures) as receiver:
        row_id = scored(sessions, "T-9", "positive", connector="generic")
        target = GenericWriteBack(receiver.url + receiver.path, secret=CALLBACK_SECRET)
        run_until(sender(sessions, webhook_metrics, target), done(sessions, row_id))
        assert receiver.statuses() == [500, 503, 204]  # each attempt signed (else 401)
        ids = {r.headers["webhook-id"] for r in receiver.received}
        assert ids == {row(sessions, row_id).message_id}
        [body] = receiver.delivered.values()
        assert body["type"] == "sentiment.scored"
        assert (body["data"]["external_id"], body["data"]["label"]) == ("T-9", "positive")
        assert receiver.received[2].at - receiver.received[1].at >= 1.0  # 503's Retry-After
