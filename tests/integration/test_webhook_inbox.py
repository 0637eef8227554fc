"""The webhook inbox on a real SQLite file and a real PostgreSQL database: an event
stored once whatever the number of deliveries, rows leased to one worker at a time,
failed attempts retried and then given up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from storage import inbox

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def entry(event_id: str, ticket: str = "5158") -> inbox.InboxEntry:
    return inbox.InboxEntry(
        connector="zendesk",
        event_id=event_id,
        event_type="zen:event-type:ticket.comment_added",
        text="The parcel arrived broken.",
        external_id=ticket,
        comment_id="10001",
        author="8447388090494",
    )


def test_an_event_delivered_again_is_stored_once(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert inbox.add(session=session, entries=[entry("e-1"), entry("e-2")]) == 2
        session.commit()
    with sessions() as session:  # a retry of e-2, with a new e-3
        assert inbox.add(session=session, entries=[entry("e-2"), entry("e-3")]) == 1
        session.commit()
    with sessions() as session:  # the same id from another connector is another event
        other = inbox.InboxEntry(**{**entry("e-1").__dict__, "connector": "intercom"})
        assert inbox.add(session=session, entries=[other]) == 1
        session.commit()
        assert inbox.count_by_status(session=session) == {"pending": 4}


def test_a_leased_row_is_not_claimed_again_until_its_lease_ends(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        inbox.add(session=session, entries=[entry("e-1"), entry("e-2")], now=NOW)
        session.commit()
    with sessions() as session:
        first = inbox.claim(session=session, limit=1, lease_s=60, now=NOW)
        second = inbox.claim(session=session, limit=5, lease_s=60, now=NOW)
        assert [item.entry.event_id for item in first] == ["e-1"]
        assert [item.entry.event_id for item in second] == ["e-2"]
        assert inbox.claim(session=session, limit=5, lease_s=60, now=NOW) == []
        # The worker holding e-1 died: its lease ends and another takes it.
        later = NOW + timedelta(seconds=61)
        retaken = inbox.claim(session=session, limit=5, lease_s=60, now=later)
        assert sorted(item.entry.event_id for item in retaken) == ["e-1", "e-2"]
        assert retaken[0].entry == entry("e-1")


def test_done_drops_the_text_and_failures_retry_then_give_up(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as session:
        inbox.add(session=session, entries=[entry("e-1"), entry("e-2")], now=NOW)
        session.commit()
        [done, failing] = inbox.claim(session=session, limit=2, lease_s=60, now=NOW)
        inbox.mark_done(session=session, item_id=done.id, prediction_id="p-1", now=NOW)
        given_up = inbox.mark_attempt_failed(
            session=session, item_id=failing.id, error="boom", retry_in_s=30,
            max_attempts=2, now=NOW,
        )  # fmt: skip
        assert not given_up
        # Not before its retry is due...
        assert (
            inbox.claim(session=session, limit=5, lease_s=60, now=NOW + timedelta(seconds=29)) == []
        )
        [again] = inbox.claim(session=session, limit=5, lease_s=60, now=NOW + timedelta(seconds=31))
        assert (again.id, again.attempts) == (failing.id, 1)
        assert inbox.mark_attempt_failed(
            session=session, item_id=failing.id, error="boom again", retry_in_s=30,
            max_attempts=2, now=NOW,
        )  # fmt: skip
        assert inbox.claim(session=session, limit=5, lease_s=60, now=NOW + timedelta(days=1)) == []
        assert inbox.count_by_status(session=session) == {"done": 1, "failed": 1}
        stored = session.get(inbox.WebhookInbox, done.id)
        assert stored is not None and (stored.text, stored.prediction_id) == (None, "p-1")
        failed = session.get(inbox.WebhookInbox, failing.id)
        assert failed is not None and (failed.last_error, failed.text) == (
            "boom again",
            "The parcel arrived broken.",
        )
