"""The store on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

import storage
from core import database
from storage import store
from storage.export import serialize
from storage.models import Feedback, Prediction


def make_prediction(
    label: str = "positive", created_at: datetime | None = None
) -> storage.PredictionRecord:
    scores = {"negative": 0.1, "neutral": 0.2, "positive": 0.7}
    scores = {name: (0.7 if name == label else 0.15) for name in scores}
    return storage.PredictionRecord(
        id=str(uuid.uuid4()),
        created_at=created_at or datetime.now(UTC),
        text="great service",
        text_storage="raw",
        text_sha256="0" * 64,
        label=label,
        scores=scores,
        model_version="zero-shot:test",
        template_version="v1",
        latency_ms=3.5,
    )


def insert(sessions: sessionmaker[Session], *records: storage.PredictionRecord) -> None:
    with sessions() as session:
        store.insert_predictions(session=session, records=records)
        session.commit()


def count_feedback(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Feedback)) or 0)


def test_prediction_round_trip(sessions: sessionmaker[Session]) -> None:
    record = make_prediction("neutral")
    insert(sessions, record)
    with sessions() as session:
        row = store.get_prediction(session=session, prediction_id=record.id)
        assert row is not None
        assert (row.label, row.confidence, row.scores) == ("neutral", 0.7, record.scores)


def test_correction_is_stored_with_agreement(sessions: sessionmaker[Session]) -> None:
    record = make_prediction("positive")
    insert(sessions, record)
    result = store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=record.id, label="negative", source="crm"),
    )
    assert (result.kind, result.effective_label, result.agrees) == ("label", "negative", False)
    assert result.created_at.tzinfo is not None
    assert count_feedback(sessions) == 1


@pytest.mark.parametrize(
    ("verdict", "effective", "agrees"), [("correct", "positive", True), ("incorrect", None, False)]
)
def test_verdicts(
    sessions: sessionmaker[Session], verdict: str, effective: str | None, agrees: bool
) -> None:
    record = make_prediction("positive")
    insert(sessions, record)
    result = store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=record.id, verdict=verdict),  # type: ignore[arg-type]
    )
    assert (result.effective_label, result.agrees) == (effective, agrees)


def test_unknown_prediction_is_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(storage.PredictionNotFound):
        store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(prediction_id="nope", verdict="correct"),
        )
    assert count_feedback(sessions) == 0


def test_idempotency_key_replays_and_stores_one_row(sessions: sessionmaker[Session]) -> None:
    record = make_prediction()
    insert(sessions, record)
    item = storage.FeedbackInput(prediction_id=record.id, label="neutral", idempotency_key="k-1")
    first = store.record_feedback(session_factory=sessions, feedback=item)
    again = store.record_feedback(session_factory=sessions, feedback=item)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.feedback_id == first.feedback_id
    assert count_feedback(sessions) == 1


def test_idempotency_key_with_other_body_conflicts(sessions: sessionmaker[Session]) -> None:
    record = make_prediction()
    insert(sessions, record)
    store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(
            prediction_id=record.id, label="neutral", idempotency_key="k"
        ),
    )
    with pytest.raises(storage.IdempotencyConflict):
        store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(
                prediction_id=record.id, label="negative", idempotency_key="k"
            ),
        )
    assert count_feedback(sessions) == 1


def test_identical_feedback_without_key_is_a_duplicate(sessions: sessionmaker[Session]) -> None:
    record = make_prediction()
    insert(sessions, record)
    item = storage.FeedbackInput(prediction_id=record.id, verdict="incorrect")
    first = store.record_feedback(session_factory=sessions, feedback=item)
    with pytest.raises(storage.DuplicateFeedback) as caught:
        store.record_feedback(session_factory=sessions, feedback=item)
    assert caught.value.feedback_id == first.feedback_id
    # Different feedback on the same prediction is fine.
    store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=record.id, label="negative"),
    )
    assert count_feedback(sessions) == 2


def test_concurrent_retries_with_one_key_store_one_row(sessions: sessionmaker[Session]) -> None:
    record = make_prediction()
    insert(sessions, record)
    item = storage.FeedbackInput(prediction_id=record.id, verdict="correct", idempotency_key="race")
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: store.record_feedback(session_factory=sessions, feedback=item), range(16)
            )
        )
    assert len({r.feedback_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert count_feedback(sessions) == 1


def test_export_filters_by_time_range_in_both_formats(sessions: sessionmaker[Session]) -> None:
    records = [make_prediction("positive"), make_prediction("negative")]
    insert(sessions, *records)
    before = datetime.now(UTC)
    for record in records:
        store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(prediction_id=record.id, label="neutral"),
        )
    with sessions() as session:
        rows = list(store.iter_feedback_export(session=session, since=before))
        assert [row["prediction_id"] for row in rows] == [r.id for r in records]
        assert rows[0]["text"] == "great service" and rows[0]["effective_label"] == "neutral"
        assert list(store.iter_feedback_export(session=session, until=before)) == []
        later = datetime.now(UTC) + timedelta(seconds=1)
        assert list(store.iter_feedback_export(session=session, since=later)) == []
        jsonl = "".join(serialize(iter(rows), "jsonl")).splitlines()
        assert [json.loads(line)["feedback_id"] for line in jsonl] == [
            r["feedback_id"] for r in rows
        ]
        csv_lines = "".join(serialize(iter(rows), "csv")).splitlines()
        assert csv_lines[0].startswith("feedback_id,") and len(csv_lines) == 3


def test_deleting_a_prediction_cascades_to_its_feedback(sessions: sessionmaker[Session]) -> None:
    record = make_prediction()
    insert(sessions, record)
    store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=record.id, verdict="correct"),
    )
    with sessions() as session:
        session.delete(session.get(Prediction, record.id))
        session.commit()
    assert count_feedback(sessions) == 0


def test_purge_texts_removes_old_texts_and_keeps_rows(sessions: sessionmaker[Session]) -> None:
    old = make_prediction(created_at=datetime.now(UTC) - timedelta(days=40))
    new = make_prediction()
    insert(sessions, old, new)
    store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=old.id, verdict="correct"),
    )
    with sessions() as session:
        before = datetime.now(UTC) - timedelta(days=30)
        assert store.purge_texts(session=session, before=before) == (1, 0)
        session.commit()
    with sessions() as session:
        purged, kept = session.get(Prediction, old.id), session.get(Prediction, new.id)
        assert purged is not None and purged.text is None and purged.text_storage == "purged"
        assert kept is not None and kept.text == "great service"
    assert count_feedback(sessions) == 1


def test_purge_leaves_no_copy_of_texts_or_comments_in_the_sqlite_files(tmp_path: Path) -> None:
    """The purged values are gone from the database file and its write-ahead log,
    not only from query results."""
    url = f"sqlite:///{tmp_path / 'sentiloop.db'}"
    storage.upgrade(url)
    engine = database.make_engine(url)
    sessions = database.make_session_factory(engine)
    secret, note = "call me at SECRET-TEXT-8842", "SECRET-COMMENT-1177"
    old = storage.PredictionRecord(
        **{**vars(make_prediction(created_at=datetime.now(UTC) - timedelta(days=40))),
           "text": secret}
    )  # fmt: skip
    insert(sessions, old)
    store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=old.id, verdict="correct", comment=note),
    )
    with sessions() as session:
        session.execute(update(Feedback).values(created_at=datetime.now(UTC) - timedelta(days=40)))
        session.commit()

    def on_disk() -> bytes:
        return b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())

    assert secret.encode() in on_disk() and note.encode() in on_disk()
    with sessions() as session:
        counts = store.purge_texts(session=session, before=datetime.now(UTC) - timedelta(days=30))
        session.commit()
    assert counts == (1, 1)
    # As with the service running: its connections stay open (closing the last one
    # would checkpoint and delete the write-ahead log by itself, hiding a purge that
    # left the values there).
    service = sqlite3.connect(tmp_path / "sentiloop.db")
    try:
        service.execute("SELECT count(*) FROM predictions").fetchone()
        assert "truncated" in database.discard_freed_pages(engine)
        assert secret.encode() not in on_disk() and note.encode() not in on_disk()
    finally:
        service.close()
        engine.dispose()


def test_identical_feedback_posted_at_once_without_key_is_stored_once(
    sessions: sessionmaker[Session],
) -> None:
    """Eight identical key-less posts racing each other, ten times over: one row per
    trial, the others refused as duplicates by the database (issue 24, item 16)."""
    record = make_prediction()
    insert(sessions, record)
    for trial in range(10):
        item = storage.FeedbackInput(prediction_id=record.id, label="neutral", comment=f"#{trial}")
        barrier = threading.Barrier(8)

        def post(
            _: int, item: storage.FeedbackInput = item, barrier: threading.Barrier = barrier
        ) -> str:
            barrier.wait()
            try:
                return store.record_feedback(session_factory=sessions, feedback=item).feedback_id
            except storage.DuplicateFeedback as duplicate:
                return f"duplicate of {duplicate.feedback_id}"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(post, range(8)))
        stored = [outcome for outcome in outcomes if not outcome.startswith("duplicate")]
        assert len(stored) == 1, outcomes
        assert outcomes.count(f"duplicate of {stored[0]}") == 7
        assert count_feedback(sessions) == trial + 1


def test_the_traffic_guard_reads_the_newest_unjudged_texts_per_language(
    sessions: sessionmaker[Session],
) -> None:
    """What the gate compares answers on (``storage.stats.unjudged_texts_by_language``):
    per detected language, the newest stored texts in the window without feedback."""
    from dataclasses import replace

    from storage import stats

    now = datetime.now(UTC)

    def logged(
        text: str | None, language: str | None, minutes_ago: int
    ) -> storage.PredictionRecord:
        return replace(
            make_prediction(created_at=now - timedelta(minutes=minutes_ago)),
            text=text,
            language=language,
        )

    french = [logged(f"fr {n}", "fr", minutes_ago=n) for n in range(5)]
    judged = logged("fr judged", "fr", minutes_ago=0)
    rows = [
        *french,
        judged,
        logged("en 1", "en", minutes_ago=1),
        logged(None, "en", minutes_ago=1),  # text storage off then
        logged("und 1", "und", minutes_ago=1),
        logged("unknown 1", None, minutes_ago=1),
        logged("too old", "en", minutes_ago=600),
        logged("de 1", "de", minutes_ago=1),
    ]
    insert(sessions, *rows)
    store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=judged.id, verdict="correct"),
    )
    with sessions() as session:
        window = {"since": now - timedelta(hours=2), "until": now + timedelta(minutes=1)}
        top = stats.unjudged_texts_by_language(
            session=session, per_language=3, languages=2, **window
        )
        every = stats.unjudged_texts_by_language(
            session=session, per_language=3, languages=10, **window
        )
    # The two most frequent languages: French (5), then German and English (1 each),
    # German by name. Judged, undetermined, unstored and old texts are not read.
    assert top == {"fr": ["fr 0", "fr 1", "fr 2"], "de": ["de 1"]}
    assert every == {"fr": ["fr 0", "fr 1", "fr 2"], "de": ["de 1"], "en": ["en 1"]}
