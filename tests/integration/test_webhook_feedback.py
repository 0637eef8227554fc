"""CRM feedback through the inbox, on a real SQLite file and a real PostgreSQL
database: stored as inbox rows once per event, applied by the inbox worker through
``SentimentAPI`` (``POST /v1/feedback``'s path, a real prediction-log writer) to the
ticket's latest prediction, once even when applied twice; feedback that arrives
before its ticket's text is scored waits for it; feedback on a ticket never scored
ends ``unmatched``, counted. The model is the only fake (``classify``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

import storage
from core import database
from service.http.api import SentimentAPI
from service.http.inbox import MATCH_ATTEMPTS, InboxScorer, feedback_key
from service.inference.scoring import ScoreItem, ScoreResult
from service.metrics import ApiMetrics, WebhookMetrics
from storage import inbox
from storage.models import Feedback, Prediction
from tests.integration.test_feedback_api import make_api


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    storage.upgrade(database_url)
    made = database.make_engine(database_url)
    yield made
    made.dispose()


@pytest.fixture
def api(engine: Engine, api_metrics: ApiMetrics, tmp_path: Path) -> Iterator[SentimentAPI]:
    made = make_api(engine, api_metrics, tmp_path)
    yield made
    made.log_writer.close()


async def classify(items: Sequence[ScoreItem]) -> list[ScoreResult]:
    """The model: every text negative."""
    return [
        ScoreResult(scores={"negative": 0.8, "neutral": 0.15, "positive": 0.05}, model_version="m")
        for _ in items
    ]


def scorer(api: SentimentAPI, metrics: WebhookMetrics) -> InboxScorer:
    return InboxScorer(
        api.sessions,
        lambda request: api.predict(request, classify),
        metrics,
        serving=lambda: True,
        poll_interval_s=1,
        record_feedback=api.record_feedback,
    )


def comment(ticket: str, event_id: str) -> inbox.InboxEntry:
    return inbox.InboxEntry(
        connector="zendesk",
        event_id=event_id,
        event_type="zen:event-type:ticket.comment_added",
        text="The parcel arrived broken and nobody answers.",
        external_id=ticket,
    )


def csat(ticket: str, event_id: str, label: str = "neutral") -> inbox.InboxEntry:
    return inbox.InboxEntry(
        connector="zendesk",
        event_id=event_id,
        event_type="satisfaction_rating",
        text="",
        external_id=ticket,
        author="8447388090494",
        feedback=inbox.FeedbackSignal(label=label, signal="bad"),
    )


def add(sessions: sessionmaker[Session], *entries: inbox.InboxEntry) -> int:
    with sessions() as session:
        stored = inbox.add(session=session, entries=list(entries))
        session.commit()
    return stored


def time_passes(sessions: sessionmaker[Session]) -> None:
    """Every lease and retry delay over: rows due now."""
    with sessions() as session:
        session.execute(update(inbox.WebhookInbox).values(lease_until=None))
        session.commit()


def drain(api: SentimentAPI, metrics: WebhookMetrics) -> int:
    claimed = asyncio.run(scorer(api, metrics).drain())
    api.log_writer.flush(5)
    return claimed


def row(sessions: sessionmaker[Session], event_id: str) -> inbox.WebhookInbox:
    with sessions() as session:
        found = session.scalars(
            select(inbox.WebhookInbox).where(inbox.WebhookInbox.event_id == event_id)
        ).one()
        session.expunge(found)
        return found


def feedback_rows(sessions: sessionmaker[Session]) -> list[Feedback]:
    with sessions() as session:
        rows = list(session.scalars(select(Feedback)).all())
        session.expunge_all()
        return rows


def test_feedback_rows_round_trip_and_are_stored_once_per_event(
    sessions: sessionmaker[Session],
) -> None:
    assert add(sessions, csat("T-1", "inv-1"), comment("T-1", "c-1")) == 2
    assert add(sessions, csat("T-1", "inv-1", label="positive")) == 0  # a retry: same id
    with sessions() as session:
        assert inbox.scoring_pending(session=session, connector="zendesk", external_id="T-1")
        assert not inbox.scoring_pending(session=session, connector="zendesk", external_id="T-2")
        assert not inbox.scoring_pending(session=session, connector="hubspot", external_id="T-1")
        claimed = inbox.claim(session=session, limit=5, lease_s=60)
    assert [item.entry for item in claimed] == [csat("T-1", "inv-1"), comment("T-1", "c-1")]
    with sessions() as session:
        inbox.mark_unmatched(session=session, item_id=claimed[0].id, reason="no prediction")
        assert inbox.count_by_status(session=session) == {"pending": 1, "unmatched": 1}
    time_passes(sessions)
    with sessions() as session:  # an unmatched row is never taken up again
        assert [i.entry.event_id for i in inbox.claim(session=session, limit=5, lease_s=60)] == [
            "c-1"
        ]


def test_feedback_is_applied_to_the_tickets_latest_prediction_once(
    api: SentimentAPI, webhook_metrics: WebhookMetrics
) -> None:
    add(api.sessions, comment("T-10", "c-10"))
    assert drain(api, webhook_metrics) == 1
    add(api.sessions, csat("T-10", "inv-10"))
    assert drain(api, webhook_metrics) == 1
    [stored] = feedback_rows(api.sessions)
    applied = row(api.sessions, "inv-10")
    assert (applied.status, applied.prediction_id) == ("done", stored.prediction_id)
    assert (stored.label, stored.source, stored.agrees) == ("neutral", "zendesk", False)
    assert stored.idempotency_key == feedback_key("zendesk", "inv-10")
    assert stored.comment == "satisfaction_rating: bad"
    with api.sessions() as session:
        prediction = session.get(Prediction, stored.prediction_id)
        assert prediction is not None and prediction.external_id == "T-10"
    # A worker died after storing it and before marking the row done: it is applied
    # again, and the idempotency key stores it once.
    with api.sessions() as session:
        session.execute(
            update(inbox.WebhookInbox)
            .where(inbox.WebhookInbox.id == applied.id)
            .values(status="pending")
        )
        session.commit()
    time_passes(api.sessions)
    replayed_before = REGISTRY.get_sample_value(
        "sentiloop_webhook_feedback_total", {"connector": "zendesk", "result": "replayed"}
    )
    assert drain(api, webhook_metrics) == 1
    assert len(feedback_rows(api.sessions)) == 1
    assert row(api.sessions, "inv-10").status == "done"
    assert (
        REGISTRY.get_sample_value(
            "sentiloop_webhook_feedback_total", {"connector": "zendesk", "result": "replayed"}
        )
        == (replayed_before or 0) + 1
    )


def test_feedback_arriving_before_its_text_is_scored_waits_for_it(
    api: SentimentAPI, webhook_metrics: WebhookMetrics
) -> None:
    """An agent replies and tags in one update: both events arrive together, the tag's
    first. It is not lost, nor given up: it waits while the text waits to be scored."""
    add(api.sessions, csat("T-20", "tag-20"), comment("T-20", "c-20"))
    assert drain(api, webhook_metrics) == 2  # the tag first: no prediction yet
    waiting = row(api.sessions, "tag-20")
    assert (waiting.status, waiting.attempts) == ("pending", 0)  # deferred, not counted
    assert feedback_rows(api.sessions) == []
    time_passes(api.sessions)
    assert drain(api, webhook_metrics) == 1
    [stored] = feedback_rows(api.sessions)
    assert row(api.sessions, "tag-20").prediction_id == stored.prediction_id
    assert row(api.sessions, "c-20").prediction_id == stored.prediction_id


def test_feedback_on_a_ticket_never_scored_ends_unmatched_and_counted(
    api: SentimentAPI, webhook_metrics: WebhookMetrics
) -> None:
    def unmatched() -> float:
        value = REGISTRY.get_sample_value(
            "sentiloop_webhook_feedback_total", {"connector": "zendesk", "result": "unmatched"}
        )
        return value or 0.0

    before = unmatched()
    add(api.sessions, csat("T-never", "inv-30"))
    for attempt in range(1, MATCH_ATTEMPTS):
        assert drain(api, webhook_metrics) == 1
        kept = row(api.sessions, "inv-30")
        assert (kept.status, kept.attempts) == ("pending", attempt)  # a prediction may lag
        time_passes(api.sessions)
    assert drain(api, webhook_metrics) == 1
    given_up = row(api.sessions, "inv-30")
    assert given_up.status == "unmatched"
    assert given_up.last_error is not None and "T-never" in given_up.last_error
    # Kept, to replay: its label and the CRM's value in their columns.
    assert (given_up.kind, given_up.label, given_up.signal, given_up.text) == (
        "feedback",
        "neutral",
        "bad",
        None,
    )
    assert unmatched() == before + 1
    time_passes(api.sessions)
    assert drain(api, webhook_metrics) == 0
    assert feedback_rows(api.sessions) == []
