"""The inbox worker on a real SQLite file: rows wait, unclaimed, while the models
load; a text /v1/predict refuses is given up at once (never retried), kept with
the reason."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.http.inbox import InboxScorer
from service.http.schemas import PredictRequest, PredictResponse
from service.metrics import WebhookMetrics
from storage import inbox


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


async def never_called(request: PredictRequest) -> PredictResponse:
    raise AssertionError(f"scored {request!r}, which /v1/predict refuses")


def test_rows_wait_while_the_models_load_and_refused_texts_are_given_up(
    sessions: sessionmaker[Session], webhook_metrics: WebhookMetrics
) -> None:
    with sessions() as session:
        refused = inbox.InboxEntry(
            connector="generic",
            event_id="e-1",
            event_type="generic",
            text="Written by an older version, in a language code the API refuses.",
            external_id="T-1",
            language="xx",
        )
        inbox.add(session=session, entries=[refused])
        session.commit()
    serving = False
    scorer = InboxScorer(
        sessions, never_called, webhook_metrics, serving=lambda: serving, poll_interval_s=1
    )
    assert asyncio.run(scorer.drain()) == 0
    with sessions() as session:
        [row] = session.scalars(select(inbox.WebhookInbox)).all()
        assert (row.status, row.lease_until, row.attempts) == ("pending", None, 0)
    serving = True
    assert asyncio.run(scorer.drain()) == 1
    with sessions() as session:
        [row] = session.scalars(select(inbox.WebhookInbox)).all()
        assert (row.status, row.attempts) == ("failed", 1)
        assert row.last_error is not None and "refused by /v1/predict" in row.last_error
        assert row.text == refused.text  # kept, to replay once fixed
    assert asyncio.run(scorer.drain()) == 0  # not taken again
