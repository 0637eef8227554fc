"""The feedback API's logic (``service.http.api.SentimentAPI``) without HTTP, over a
real SQLite file and a real PostgreSQL database and a real prediction-log writer:
a batch's time budget, one wait for predictions not written yet, no wait for ids
from the future, a bound on requests that wait (issue 24, item 15)."""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

import storage
from core import database
from core.settings import Settings
from model.templates import TemplateRegistry
from service.http.api import SentimentAPI
from service.http.schemas import FeedbackBatchRequest, FeedbackRequest
from service.metrics import ApiMetrics
from storage import store
from storage.models import Feedback


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    storage.upgrade(database_url)
    made = database.make_engine(database_url)
    yield made
    made.dispose()


def make_api(engine: Engine, metrics: ApiMetrics, tmp_path: Path, **settings: Any) -> SentimentAPI:
    configured = Settings(home=tmp_path, **settings)
    sessions = database.make_session_factory(engine)
    writer = storage.PredictionLogWriter(sessions, flush_interval_s=0.05)
    writer.start()
    return SentimentAPI(
        configured,
        TemplateRegistry.load(configured.resolved_templates_dir),
        metrics,
        database_engine=engine,
        sessions=sessions,
        log_writer=writer,
    )


def id_made_at(unix_s: float) -> str:
    """A version-7 id whose time is ``unix_s`` (in the future, say)."""
    value = (int(unix_s * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0b11 << 62)) | (0b10 << 62)
    return str(uuid.UUID(int=value))


def logged_predictions(
    sessions: sessionmaker[Session], count: int, ids: list[str] | None = None
) -> list[str]:
    records = [
        storage.PredictionRecord(
            id=ids[n] if ids else storage.time_ordered_id(),
            created_at=datetime.now(UTC) - timedelta(seconds=5),
            text=None,
            text_storage="none",
            text_sha256="0" * 64,
            label="positive",
            scores={"negative": 0.1, "neutral": 0.1, "positive": 0.8},
            model_version="m",
            template_version="v1",
            latency_ms=1.0,
        )
        for n in range(count)
    ]
    with sessions() as session:
        store.insert_predictions(session=session, records=records)
        session.commit()
    return [record.id for record in records]


def stored_rows(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Feedback)) or 0)


def test_ids_just_ahead_of_now_wait_once_per_batch_not_once_per_item(
    engine: Engine, api_metrics: ApiMetrics, tmp_path: Path
) -> None:
    """20 items naming unknown ids just ahead of now (within the clock skew), then 5
    valid ones: they waited one after the other (up to 3.6 s each: past the HTTP
    timeout with more of them); now once, for the lookup wait, and the valid ones are
    stored."""
    api = make_api(engine, api_metrics, tmp_path)
    try:
        valid = logged_predictions(api.sessions, 5)
        ahead = [id_made_at(time.time() + 0.3 + 0.03 * n) for n in range(20)]
        items = [{"prediction_id": p, "verdict": "correct"} for p in ahead + valid]
        started = time.monotonic()
        answer = api.record_feedback_batch(FeedbackBatchRequest(items=items))
        seconds = time.monotonic() - started
    finally:
        api.log_writer.close()
    assert [r.status for r in answer.results] == [404] * 20 + [201] * 5
    assert [r.index for r in answer.results] == list(range(25))
    wait_s = api.settings.feedback_lookup_wait_s
    assert wait_s - 0.1 < seconds < wait_s + 1.0, seconds  # waited, once
    assert stored_rows(api.sessions) == 5


def logged_later(sessions: sessionmaker[Session], ids: list[str], delay_s: float) -> Thread:
    """The log rows of ``ids`` written ``delay_s`` from now, as another worker's
    writer would (a prediction made moments ago, its row not written yet)."""

    def write() -> None:
        time.sleep(delay_s)
        logged_predictions(sessions, len(ids), ids)

    writer = Thread(target=write)
    writer.start()
    return writer


def test_feedback_naming_a_prediction_logged_during_its_wait_is_stored(
    engine: Engine, api_metrics: ApiMetrics, tmp_path: Path
) -> None:
    """The wait's point: a prediction whose log row lands 0.6 s after its feedback
    arrives is found then (201, on its own and in a batch), not answered 404."""
    api = make_api(engine, api_metrics, tmp_path)
    try:
        alone = storage.time_ordered_id()
        writer = logged_later(api.sessions, [alone], 0.6)
        started = time.monotonic()
        stored = api.record_feedback(FeedbackRequest(prediction_id=alone, verdict="correct"))
        seconds = time.monotonic() - started
        writer.join()
        assert stored.agrees and 0.55 < seconds < api.settings.feedback_lookup_wait_s, seconds

        [known] = logged_predictions(api.sessions, 1)
        soon = storage.time_ordered_id()
        writer = logged_later(api.sessions, [soon], 0.6)
        items = [{"prediction_id": p, "label": "negative"} for p in (soon, known)]
        started = time.monotonic()
        answer = api.record_feedback_batch(FeedbackBatchRequest(items=items))
        seconds = time.monotonic() - started
        writer.join()
    finally:
        api.log_writer.close()
    assert [r.status for r in answer.results] == [201, 201], answer.results
    assert 0.55 < seconds < api.settings.feedback_lookup_wait_s, seconds
    assert stored_rows(api.sessions) == 3


def test_items_past_the_batch_budget_are_503_and_not_stored(
    engine: Engine, api_metrics: ApiMetrics, tmp_path: Path
) -> None:
    api = make_api(engine, api_metrics, tmp_path, feedback_batch_budget_s=0.3)
    try:
        valid = logged_predictions(api.sessions, 400)
        items = [{"prediction_id": p, "label": "neutral"} for p in valid]
        started = time.monotonic()
        answer = api.record_feedback_batch(FeedbackBatchRequest(items=items))
        seconds = time.monotonic() - started
    finally:
        api.log_writer.close()
    statuses = Counter(r.status for r in answer.results)
    assert set(statuses) == {201, 503} and seconds < 1.5, (statuses, seconds)
    unreached = [r for r in answer.results if r.status == 503]
    assert all("time budget" in (r.error or "") for r in unreached)
    assert unreached[0].index == statuses[201]  # stored in order, then none
    assert stored_rows(api.sessions) == answer.stored == statuses[201]


def test_an_id_from_beyond_the_clock_skew_is_404_at_once_and_one_near_waits_its_wait(
    engine: Engine, api_metrics: ApiMetrics, tmp_path: Path
) -> None:
    api = make_api(engine, api_metrics, tmp_path)
    try:
        wait_s = api.settings.feedback_lookup_wait_s
        for ahead_s, shortest_s, longest_s in ((30.0, 0.0, 0.3), (0.8, wait_s - 0.1, wait_s + 0.3)):
            started = time.monotonic()
            with pytest.raises(storage.PredictionNotFound):
                api.record_feedback(
                    FeedbackRequest(
                        prediction_id=id_made_at(time.time() + ahead_s), verdict="correct"
                    )
                )
            assert shortest_s <= time.monotonic() - started < longest_s, ahead_s
    finally:
        api.log_writer.close()


def test_requests_waiting_for_log_rows_cannot_hold_every_thread(
    engine: Engine, api_metrics: ApiMetrics, tmp_path: Path
) -> None:
    """With one waiter allowed, a second request naming a not-yet-made prediction is a
    503 at once, and ordinary feedback is answered meanwhile."""
    api = make_api(engine, api_metrics, tmp_path, feedback_lookup_waiters=1)
    [known] = logged_predictions(api.sessions, 1)

    def unknown_soon() -> str:
        try:
            api.record_feedback(
                FeedbackRequest(prediction_id=id_made_at(time.time() + 0.5), verdict="correct")
            )
        except storage.FeedbackError as error:
            return type(error).__name__
        return "stored"

    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(unknown_soon)
            time.sleep(0.3)  # the first waits now
            started = time.monotonic()
            second = pool.submit(unknown_soon).result()
            ordinary = api.record_feedback(FeedbackRequest(prediction_id=known, verdict="correct"))
            seconds = time.monotonic() - started
            assert (second, first.result()) == ("StoreUnavailable", "PredictionNotFound")
    finally:
        api.log_writer.close()
    assert ordinary.agrees and seconds < 0.5, seconds
