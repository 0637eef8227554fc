"""The webhook inbox on a real SQLite file and a real PostgreSQL database: an event
stored once whatever the number of deliveries, rows leased to one worker at a time,
failed attempts retried and then given up, failed events and unmatched feedback
listed and replayed (``sentiloop webhooks``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
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


def csat(event_id: str, ticket: str = "5158") -> inbox.InboxEntry:
    return inbox.InboxEntry(
        connector="zendesk",
        event_id=event_id,
        event_type="satisfaction_rating",
        text="",
        external_id=ticket,
        feedback=inbox.FeedbackSignal(label="negative", signal="bad"),
    )


def given_up(sessions: sessionmaker[Session]) -> dict[str, int]:
    """Three events given up: e-1 failed (zendesk), e-2 failed (intercom), fb-1
    unmatched feedback; e-3 done. Returns their ids by event id."""
    other = inbox.InboxEntry(**{**entry("e-2").__dict__, "connector": "intercom"})
    with sessions() as session:
        inbox.add(session=session, entries=[entry("e-1"), other, csat("fb-1"), entry("e-3")])
        session.commit()
        items = {i.entry.event_id: i.id for i in inbox.claim(session=session, limit=9, lease_s=60)}
        for event_id in ("e-1", "e-2"):
            inbox.mark_attempt_failed(
                session=session, item_id=items[event_id], error="refused by /v1/predict",
                retry_in_s=5, max_attempts=1,
            )  # fmt: skip
        inbox.mark_unmatched(session=session, item_id=items["fb-1"], reason="no prediction of 5158")
        inbox.mark_done(session=session, item_id=items["e-3"], prediction_id="p-3")
    return items


def test_feedback_alone_is_no_text_waiting_to_be_scored(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        inbox.add(session=session, entries=[csat("fb-1", ticket="T-1")])
        session.commit()
        assert not inbox.scoring_pending(session=session, connector="zendesk", external_id="T-1")
        [item] = inbox.claim(session=session, limit=5, lease_s=60)
    assert item.entry == csat("fb-1", ticket="T-1")


def test_failed_and_unmatched_rows_are_replayed_with_a_fresh_count(
    sessions: sessionmaker[Session],
) -> None:
    items = given_up(sessions)
    with sessions() as session:
        # A done row is not replayed (its text is gone), nor a pending one.
        assert inbox.replay(session=session, ids=[items["e-3"]]) == []
        assert inbox.replay(session=session, statuses=[inbox.UNMATCHED]) == [items["fb-1"]]
        assert inbox.replay(session=session, connector="intercom") == [items["e-2"]]
        assert inbox.replay(session=session) == [items["e-1"]]
        assert inbox.count_by_status(session=session) == {"pending": 3, "done": 1}
        again = inbox.claim(session=session, limit=9, lease_s=60)
    assert sorted((i.entry.event_id, i.attempts) for i in again) == [
        ("e-1", 0),
        ("e-2", 0),
        ("fb-1", 0),
    ]
    assert next(i.entry for i in again if i.entry.event_id == "fb-1") == csat("fb-1")


def test_the_cli_lists_failed_events_and_unmatched_feedback_and_replays_them(
    sessions: sessionmaker[Session], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from sentiloop.cli import app

    monkeypatch.setenv("SENTILOOP_DATABASE_URL", database_url)
    items = given_up(sessions)
    runner = CliRunner()
    listed = runner.invoke(app, ["webhooks", "list", "--status", "unmatched", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = [json.loads(line) for line in listed.output.splitlines()]
    assert {k: row[k] for k in ("id", "kind", "ticket", "label", "signal", "last_error")} == {
        "id": items["fb-1"],
        "kind": "feedback",
        "ticket": "5158",
        "label": "negative",
        "signal": "bad",
        "last_error": "no prediction of 5158",
    }
    failed = runner.invoke(app, ["webhooks", "list", "--status", "failed", "--kind", "text"])
    lines = failed.output.splitlines()
    assert lines[0].split()[:4] == ["id", "connector", "kind", "ticket"]
    assert [line.split()[0] for line in lines[1:]] == [str(items["e-2"]), str(items["e-1"])]
    assert "The parcel" not in runner.invoke(app, ["webhooks", "list"]).output  # no texts

    one = runner.invoke(app, ["webhooks", "replay", str(items["fb-1"]), str(items["e-3"])])
    assert one.exit_code == 0 and f"replayed 1 webhook event(s): {items['fb-1']}" in one.output
    assert f"not failed or unmatched, left as they are: {items['e-3']}" in one.output
    some = runner.invoke(app, ["webhooks", "replay", "--all", "--connector", "intercom"])
    assert some.exit_code == 0 and f": {items['e-2']}" in some.output, some.output
    rest = runner.invoke(app, ["webhooks", "replay", "--all", "--status", "failed"])
    assert rest.exit_code == 0 and f": {items['e-1']}" in rest.output, rest.output
    nothing = runner.invoke(app, ["webhooks", "replay", "--all"])
    assert nothing.exit_code == 2 and "no failed or unmatched" in nothing.output
    neither = runner.invoke(app, ["webhooks", "replay"])
    assert neither.exit_code == 2 and "--all" in neither.output
    loose = runner.invoke(app, ["webhooks", "replay", "7", "--status", "failed"])
    assert loose.exit_code == 2 and "go with --all" in loose.output
    with sessions() as session:
        assert inbox.count_by_status(session=session) == {"pending": 3, "done": 1}
