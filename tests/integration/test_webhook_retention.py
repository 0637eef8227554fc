"""Retention of the webhook inbox and the write-back outbox on a real SQLite file and
a real PostgreSQL database: handled rows go after SENTILOOP_WEBHOOK_RETENTION_DAYS,
rows given up after SENTILOOP_WEBHOOK_DEAD_LETTER_RETENTION_DAYS, pending rows
never; a sent label stays while an older dead label of its ticket may be replayed;
rows go in bounded batches, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from storage import inbox, outbox
from storage.models import WebhookInbox, WriteBackOutbox
from storage.retention import Purged, purge_webhook_rows

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
RETENTION = {"retention_days": 30, "dead_letter_retention_days": 90}


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def received(sessions: sessionmaker[Session], event_id: str, status: str, age_days: float) -> None:
    """An inbox row received ``age_days`` ago, now of ``status``."""
    feedback = inbox.FeedbackSignal(label="neutral", signal="bad") if "csat" in event_id else None
    entry = inbox.InboxEntry(
        connector="zendesk",
        event_id=event_id,
        event_type="zen:event-type:ticket.comment_added",
        text="The parcel arrived broken.",
        external_id="5158",
        feedback=feedback,
    )
    with sessions() as session:
        assert inbox.add(session=session, entries=[entry], now=days_ago(age_days)) == 1
        session.execute(
            update(WebhookInbox).where(WebhookInbox.event_id == event_id).values(status=status)
        )
        session.commit()


def written(
    sessions: sessionmaker[Session], event_id: str, status: str, age_days: float, ticket: str = "1"
) -> None:
    """An outbox row added ``age_days`` ago, now of ``status``."""
    write = outbox.WriteBack(
        connector="zendesk",
        event_id=event_id,
        external_id=ticket,
        prediction_id=f"p-{event_id}",
        label="negative",
        confidence=0.9,
        model_version="m",
        template_version="v1",
    )
    with sessions() as session:
        assert outbox.add(session=session, write=write, now=days_ago(age_days))
        session.execute(
            update(WriteBackOutbox)
            .where(WriteBackOutbox.event_id == event_id)
            .values(status=status)
        )
        session.commit()


def left(sessions: sessionmaker[Session]) -> tuple[list[str], list[str]]:
    with sessions() as session:
        kept_in = session.scalars(select(WebhookInbox.event_id).order_by(WebhookInbox.id)).all()
        kept_out = session.scalars(
            select(WriteBackOutbox.event_id).order_by(WriteBackOutbox.id)
        ).all()
    return list(kept_in), list(kept_out)


def test_only_rows_past_their_retention_are_deleted(sessions: sessionmaker[Session]) -> None:
    for event_id, status, age in [
        ("pending-old", "pending", 400),  # never: still to score
        ("done-31d", "done", 31),
        ("csat-done-31d", "done", 31),  # feedback, applied
        ("done-29d", "done", 29),
        ("failed-91d", "failed", 91),
        ("failed-89d", "failed", 89),  # to replay still
        ("csat-unmatched-91d", "unmatched", 91),
        ("csat-unmatched-40d", "unmatched", 40),
    ]:
        received(sessions, event_id, status, age)
    for event_id, status, age, ticket in [
        ("pending-old", "pending", 400, "1"),
        ("sent-31d", "done", 31, "2"),
        ("superseded-31d", "superseded", 31, "3"),
        ("sent-29d", "done", 29, "4"),
        ("dead-91d", "dead", 91, "5"),
        # An old label, dead and kept: the newer label sent after it stays too, as
        # it is what supersedes the old one if it is replayed.
        ("dead-40d", "dead", 40, "6"),
        ("sent-after-dead-35d", "done", 35, "6"),
    ]:
        written(sessions, event_id, status, age, ticket)

    purged = purge_webhook_rows(sessions, **RETENTION, now=NOW)

    assert (purged.inbox, purged.outbox) == (4, 3)
    assert left(sessions) == (
        ["pending-old", "done-29d", "failed-89d", "csat-unmatched-40d"],
        ["pending-old", "sent-29d", "dead-40d", "sent-after-dead-35d"],
    )
    # The next run finds nothing more; once the dead label is replayed and superseded,
    # the sent label it waited on may go.
    assert purge_webhook_rows(sessions, **RETENTION, now=NOW) == Purged(inbox=0, outbox=0)
    with sessions() as session:
        session.execute(
            update(WriteBackOutbox)
            .where(WriteBackOutbox.event_id == "dead-40d")
            .values(status="superseded")
        )
        session.commit()
    assert purge_webhook_rows(sessions, **RETENTION, now=NOW).outbox == 2


def test_rows_go_in_bounded_batches_oldest_first(sessions: sessionmaker[Session]) -> None:
    for n in range(5):
        received(sessions, f"done-{n}", "done", 100 - n)
        written(sessions, f"sent-{n}", "done", 100 - n, ticket=str(n))

    first = purge_webhook_rows(sessions, **RETENTION, now=NOW, batch_size=2, max_batches=1)

    assert (first.inbox, first.outbox) == (2, 2)
    assert left(sessions) == (
        ["done-2", "done-3", "done-4"],
        ["sent-2", "sent-3", "sent-4"],
    )
    rest = purge_webhook_rows(sessions, **RETENTION, now=NOW, batch_size=2, max_batches=10)
    assert (rest.inbox, rest.outbox) == (3, 3)
    assert left(sessions) == ([], [])


def test_an_event_purged_is_new_again_but_one_kept_is_still_a_duplicate(
    sessions: sessionmaker[Session],
) -> None:
    """Retention bounds how long a CRM's retry is told from a new event."""
    received(sessions, "kept", "done", 29)
    received(sessions, "gone", "done", 31)
    purge_webhook_rows(sessions, **RETENTION, now=NOW)
    again = [
        inbox.InboxEntry(
            connector="zendesk",
            event_id=event_id,
            event_type="zen:event-type:ticket.comment_added",
            text="The parcel arrived broken.",
            external_id="5158",
        )
        for event_id in ("kept", "gone")
    ]
    with sessions() as session:
        assert inbox.add(session=session, entries=again, now=NOW) == 1
        session.commit()
