"""The write-back outbox on a real SQLite file and a real PostgreSQL database: a
write-back committed with its inbox event's "done" or not at all, rows leased to
one worker at a time, a ticket's rows in order, an older label superseded by a
newer one, failed attempts retried then dead, dead letters replayed."""

from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage import inbox, outbox
from storage.models import WebhookInbox, WriteBackOutbox

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ZENDESK = ("zendesk",)


def write(
    event_id: str, ticket: str = "5158", label: str = "negative", connector: str = "zendesk"
) -> outbox.WriteBack:
    return outbox.WriteBack(
        connector=connector,
        event_id=event_id,
        external_id=ticket,
        comment_id="10001",
        prediction_id=f"p-{event_id}",
        label=label,
        confidence=0.9,
        model_version="m",
        template_version="v2",
    )


def add(sessions: sessionmaker[Session], *writes: outbox.WriteBack) -> None:
    with sessions() as session:
        for one in writes:
            assert outbox.add(session=session, write=one, now=NOW)
        session.commit()


def claim(
    sessions: sessionmaker[Session],
    *,
    at: datetime = NOW,
    connectors: tuple[str, ...] = ZENDESK,
    coalesce: tuple[str, ...] = (),
) -> outbox.Claimed:
    with sessions() as session:
        return outbox.claim(
            session=session,
            limit=10,
            lease_s=60,
            connectors=connectors,
            coalesce=coalesce,
            now=at,
        )


def events(claimed: outbox.Claimed) -> list[str]:
    return [item.write.event_id for item in claimed.items]


def statuses(sessions: sessionmaker[Session]) -> dict[str, str]:
    """Each outbox row's status by event; an event with two rows fails here."""
    with sessions() as session:
        rows = session.execute(select(WriteBackOutbox.event_id, WriteBackOutbox.status)).all()
    by_event = {event: status for event, status in rows}
    assert len(by_event) == len(rows), sorted(rows)
    return by_event


def test_a_write_back_is_committed_with_its_events_done_or_not_at_all(
    sessions: sessionmaker[Session],
) -> None:
    entry = inbox.InboxEntry(
        connector="zendesk",
        event_id="e-1",
        event_type="zen:event-type:ticket.comment_added",
        text="The parcel arrived broken.",
        external_id="5158",
    )
    with sessions() as session:
        inbox.add(session=session, entries=[entry, dataclasses.replace(entry, event_id="e-2")])
        session.commit()
        first, second = inbox.claim(session=session, limit=2, lease_s=60)
        # The outbox row cannot be written (no prediction id): the event stays pending.
        broken = dataclasses.replace(write("e-1"), prediction_id=None)  # type: ignore[arg-type]
        with pytest.raises(IntegrityError):
            inbox.mark_done(session=session, item_id=first.id, prediction_id="p", writeback=broken)
    with sessions() as session:
        assert session.get(WebhookInbox, first.id).status == "pending"  # type: ignore[union-attr]
        inbox.mark_done(
            session=session, item_id=first.id, prediction_id="p-e-1", writeback=write("e-1")
        )
        # Scored twice (a worker's lease ran out while it scored): one write-back.
        inbox.mark_done(
            session=session, item_id=first.id, prediction_id="p-e-1", writeback=write("e-1")
        )
        inbox.mark_done(session=session, item_id=second.id, prediction_id="p-e-2")  # not written
    assert statuses(sessions) == {"e-1": "pending"}
    [item] = claim(sessions, at=datetime.now(UTC)).items
    assert item.write == write("e-1") and item.message_id.startswith("msg_")


def test_a_leased_row_is_not_claimed_again_until_its_lease_ends(
    sessions: sessionmaker[Session],
) -> None:
    add(sessions, write("e-1", "1"), write("e-2", "2"))
    assert events(claim(sessions)) == ["e-1", "e-2"]
    assert events(claim(sessions)) == []
    # The worker died: its lease ends and another takes the rows.
    assert events(claim(sessions, at=NOW + timedelta(seconds=61))) == ["e-1", "e-2"]
    assert events(claim(sessions, at=NOW + timedelta(days=1), connectors=("hubspot",))) == []


def test_a_tickets_rows_are_sent_one_at_a_time_in_order(
    sessions: sessionmaker[Session],
) -> None:
    generic = ("generic",)
    add(
        sessions,
        write("a", "T-1", connector="generic"),
        write("b", "T-1", connector="generic"),
        write("c", "T-2", connector="generic"),
    )
    [a, c] = claim(sessions, connectors=generic).items
    assert (a.write.event_id, c.write.event_id) == ("a", "c")
    later = NOW + timedelta(seconds=120)
    with sessions() as session:
        outbox.mark_sent(session=session, item_id=c.id, status_code=204, now=NOW)
        # a waits for its retry: b waits behind it, even with a's lease over.
        outbox.mark_attempt_failed(
            session=session, item_id=a.id, error="HTTP 500", status_code=500,
            retry_in_s=300, max_attempts=5, now=NOW,
        )  # fmt: skip
        assert outbox.next_due(session=session, connectors=generic, now=later) == NOW + timedelta(
            seconds=300
        )
    assert events(claim(sessions, at=later, connectors=generic)) == []
    with sessions() as session:  # a is dead: b goes (generic callbacks are events)
        outbox.mark_attempt_failed(
            session=session, item_id=a.id, error="HTTP 404", status_code=404,
            retry_in_s=None, max_attempts=5, now=NOW,
        )  # fmt: skip
    assert events(claim(sessions, at=later, connectors=generic)) == ["b"]


def test_an_older_label_not_sent_yet_is_superseded_by_a_newer_one(
    sessions: sessionmaker[Session],
) -> None:
    add(sessions, write("old", label="negative"), write("new", label="positive"))
    claimed = claim(sessions, coalesce=ZENDESK)
    assert ([i.write.event_id for i in claimed.superseded], claimed.items) == (["old"], [])
    [new] = claim(sessions, coalesce=ZENDESK).items
    assert new.write.label == "positive"
    assert statuses(sessions) == {"old": "superseded", "new": "pending"}


def test_failures_are_retried_then_dead_and_replayed(sessions: sessionmaker[Session]) -> None:
    add(sessions, write("e-1", "1"), write("e-2", "2"), write("h-1", "3", connector="hubspot"))
    [one, two] = claim(sessions).items
    with sessions() as session:
        assert not outbox.mark_attempt_failed(
            session=session, item_id=one.id, error="HTTP 429", status_code=429,
            retry_in_s=30, max_attempts=2, now=NOW,
        )  # fmt: skip
        # 401: the same request would get it again: dead at once.
        assert outbox.mark_attempt_failed(
            session=session, item_id=two.id, error="HTTP 401", status_code=401,
            retry_in_s=None, max_attempts=2, now=NOW,
        )  # fmt: skip
    assert events(claim(sessions, at=NOW + timedelta(seconds=29))) == []
    [again] = claim(sessions, at=NOW + timedelta(seconds=31)).items
    assert (again.id, again.attempts) == (one.id, 1)
    with sessions() as session:
        assert outbox.mark_attempt_failed(
            session=session, item_id=one.id, error="HTTP 500: boom", status_code=500,
            retry_in_s=60, max_attempts=2, now=NOW,
        )  # fmt: skip
        dead = outbox.list_rows(session=session, status="dead")
        assert [(r.id, r.attempts, r.last_status, r.last_error) for r in dead] == [
            (two.id, 1, 401, "HTTP 401"),
            (one.id, 2, 500, "HTTP 500: boom"),
        ]
        assert outbox.count_by_status(session=session) == {"dead": 2, "pending": 1}
        assert outbox.replay(session=session, ids=[one.id, 999]) == [one.id]
        assert outbox.replay(session=session, ids=[one.id]) == []  # pending now: left alone
        assert outbox.replay(session=session, connector="hubspot") == []
        assert outbox.replay(session=session) == [two.id]
    replayed = claim(sessions, at=NOW + timedelta(seconds=1)).items
    assert sorted((i.id, i.attempts) for i in replayed) == [(one.id, 0), (two.id, 0)]


def test_a_replayed_old_label_never_overwrites_a_newer_one(
    sessions: sessionmaker[Session],
) -> None:
    add(sessions, write("old", label="negative"))
    [old] = claim(sessions, coalesce=ZENDESK).items
    with sessions() as session:
        outbox.mark_attempt_failed(
            session=session, item_id=old.id, error="HTTP 401", status_code=401,
            retry_in_s=None, max_attempts=5, now=NOW,
        )  # fmt: skip
    add(sessions, write("new", label="positive"))
    [new] = claim(sessions, coalesce=ZENDESK).items
    with sessions() as session:
        outbox.mark_sent(session=session, item_id=new.id, status_code=200, now=NOW)
        assert outbox.replay(session=session) == [old.id]
    claimed = claim(sessions, coalesce=ZENDESK)
    assert ([i.id for i in claimed.superseded], claimed.items) == ([old.id], [])
    assert statuses(sessions) == {"old": "superseded", "new": "done"}


def test_next_due(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert outbox.next_due(session=session, connectors=ZENDESK, now=NOW) is None
    add(sessions, write("e-1"))
    with sessions() as session:
        assert outbox.next_due(session=session, connectors=ZENDESK, now=NOW) == NOW
        assert outbox.next_due(session=session, connectors=("hubspot",), now=NOW) is None
    claim(sessions)
    with sessions() as session:
        assert outbox.next_due(session=session, connectors=ZENDESK, now=NOW) == NOW + timedelta(
            seconds=60
        )


def test_workers_claiming_at_once_take_each_row_once(sessions: sessionmaker[Session]) -> None:
    add(sessions, *(write(f"e-{n}", str(n)) for n in range(60)))
    taken: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            with sessions() as session:
                claimed = outbox.claim(session=session, limit=4, lease_s=600, connectors=ZENDESK)
            if not claimed.items:
                return
            with lock:
                taken.extend(events(claimed))

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(work) for _ in range(4)]:
            future.result()
    assert sorted(taken) == sorted(f"e-{n}" for n in range(60))


def test_the_cli_lists_dead_letters_and_replays_them(
    sessions: sessionmaker[Session], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from sentiloop.cli import app

    monkeypatch.setenv("SENTILOOP_DATABASE_URL", database_url)
    add(sessions, write("e-1", "1"), write("e-2", "2"), write("h-1", "3", connector="hubspot"))
    with sessions() as session:
        for item in claim(sessions, connectors=("zendesk", "hubspot")).items:
            outbox.mark_attempt_failed(
                session=session, item_id=item.id, error=f"PUT https://x/{item.id}: HTTP 401",
                status_code=401, retry_in_s=None, max_attempts=5, now=NOW,
            )  # fmt: skip
        ids = [r.id for r in outbox.list_rows(session=session, status="dead")]
    runner = CliRunner()
    listed = runner.invoke(app, ["writeback", "list", "--status", "dead", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["id"], r["status"], r["last_status"]) for r in rows] == [
        (i, "dead", 401) for i in ids
    ]
    table = runner.invoke(app, ["writeback", "list"])
    assert table.output.splitlines()[0].split()[:5] == [
        "id",
        "connector",
        "ticket",
        "label",
        "status",
    ]
    one = runner.invoke(app, ["writeback", "replay", str(ids[-1]), "12345"])
    assert one.exit_code == 0 and f"replayed 1 write-back(s): {ids[-1]}" in one.output
    assert "not dead, left as they are: 12345" in one.output
    rest = runner.invoke(app, ["writeback", "replay", "--all", "--connector", "hubspot"])
    assert rest.exit_code == 0, rest.output
    again = runner.invoke(app, ["writeback", "replay", "--all"])
    assert again.exit_code == 0 and "replayed 1 write-back(s)" in again.output
    nothing = runner.invoke(app, ["writeback", "replay", "--all"])
    assert nothing.exit_code == 2 and "no dead write-backs" in nothing.output
    neither = runner.invoke(app, ["writeback", "replay"])
    assert neither.exit_code == 2 and "--all" in neither.output
    with sessions() as session:
        assert outbox.count_by_status(session=session) == {"pending": 3}
