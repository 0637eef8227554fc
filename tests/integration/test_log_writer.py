from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

import feedback
from feedback import store
from feedback.models import Prediction


def record() -> feedback.PredictionRecord:
    return feedback.PredictionRecord(
        id=str(uuid.uuid4()), created_at=datetime.now(UTC), text=None, text_storage="none",
        text_sha256="0" * 64, label="neutral",
        scores={"negative": 0.2, "neutral": 0.6, "positive": 0.2},
        model_version="m", template_version="v1", latency_ms=1.0,
    )  # fmt: skip


class CountingObserver:
    def __init__(self) -> None:
        self.dropped_total = 0
        self.written_total = 0
        self.failures = 0
        self.spooled_total = 0
        self.replayed_total = 0

    def written(self, count: int, seconds: float) -> None:
        self.written_total += count

    def dropped(self, count: int) -> None:
        self.dropped_total += count

    def write_failed(self) -> None:
        self.failures += 1

    def queue_depth(self, depth: int) -> None:
        pass

    def spooled(self, count: int) -> None:
        self.spooled_total += count

    def replayed(self, count: int) -> None:
        self.replayed_total += count


def count_rows(url: str) -> int:
    engine = feedback.make_engine(url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(Prediction)).scalar_one()
    engine.dispose()
    return int(count)


def test_every_accepted_record_is_written(database_url: str) -> None:
    feedback.upgrade(database_url)
    engine = feedback.make_engine(database_url)
    observer = CountingObserver()
    writer = feedback.PredictionLogWriter(
        feedback.make_session_factory(engine), queue_size=5000, batch_size=100, observer=observer
    )
    writer.start()
    for _ in range(30):
        assert writer.submit([record() for _ in range(50)]) == 50
    assert writer.flush(30)
    writer.close()
    engine.dispose()
    assert count_rows(database_url) == 1500
    assert observer.written_total == 1500 and observer.dropped_total == 0


class TransactionCounter(CountingObserver):
    def __init__(self) -> None:
        super().__init__()
        self.transactions = 0

    def written(self, count: int, seconds: float) -> None:
        super().written(count, seconds)
        self.transactions += 1


def wait_for_rows(url: str, expected: int, timeout_s: float) -> float:
    """Seconds until ``expected`` rows are in the table (fails after ``timeout_s``)."""
    started = time.monotonic()
    while count_rows(url) < expected:
        assert time.monotonic() - started < timeout_s, f"fewer than {expected} rows"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_trickle_of_records_is_written_once_per_flush_interval(sqlite_url: str) -> None:
    """The writer is not woken per record (each wake-up takes the GIL from the event
    loop): records arriving one by one within the interval share one transaction."""
    feedback.upgrade(sqlite_url)
    engine = feedback.make_engine(sqlite_url)
    observer = TransactionCounter()
    writer = feedback.PredictionLogWriter(
        feedback.make_session_factory(engine), flush_interval_s=1.5, observer=observer
    )
    writer.start()
    time.sleep(0.1)  # the writer is waiting
    for _ in range(12):
        writer.submit([record()])
        time.sleep(0.02)
    wait_for_rows(sqlite_url, 12, timeout_s=5)  # written without a flush() call
    assert observer.transactions <= 2
    writer.close()
    engine.dispose()


def test_a_full_batch_is_written_without_waiting_for_the_interval(sqlite_url: str) -> None:
    feedback.upgrade(sqlite_url)
    engine = feedback.make_engine(sqlite_url)
    writer = feedback.PredictionLogWriter(
        feedback.make_session_factory(engine), batch_size=20, flush_interval_s=60
    )
    writer.start()
    time.sleep(0.1)
    writer.submit([record() for _ in range(20)])
    assert wait_for_rows(sqlite_url, 20, timeout_s=10) < 10
    writer.submit([record()])
    assert writer.flush(5)  # a flush does not wait for the interval either
    assert count_rows(sqlite_url) == 21
    writer.close()
    engine.dispose()


def test_full_queue_drops_loudly_and_counts(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    feedback.upgrade(sqlite_url)
    engine = feedback.make_engine(sqlite_url)
    observer = CountingObserver()
    writer = feedback.PredictionLogWriter(
        feedback.make_session_factory(engine), queue_size=10, observer=observer
    )
    # Not started: nothing drains the queue.
    accepted = writer.submit([record() for _ in range(25)])
    assert accepted == 10
    assert observer.dropped_total == 15 and writer.stats.dropped == 15
    assert "15 prediction records not logged" in caplog.text
    writer.start()
    writer.close()
    engine.dispose()
    assert count_rows(sqlite_url) == 10


def test_failed_writes_are_retried_until_the_table_exists(sqlite_url: str) -> None:
    engine = feedback.make_engine(sqlite_url)  # no migration yet: inserts fail
    observer = CountingObserver()
    writer = feedback.PredictionLogWriter(
        feedback.make_session_factory(engine), flush_interval_s=0.05, observer=observer
    )
    writer.start()
    writer.submit([record() for _ in range(3)])
    assert not writer.flush(0.5)
    assert observer.failures >= 1
    feedback.upgrade(sqlite_url)
    assert writer.flush(15)
    writer.close()
    engine.dispose()
    assert count_rows(sqlite_url) == 3


def test_database_down_spools_to_disk_then_replays(sqlite_url: str, tmp_path: Path) -> None:
    engine = feedback.make_engine(sqlite_url)  # no tables yet: every write fails
    observer = CountingObserver()
    spool = feedback.Spool(tmp_path / "spool")
    writer = feedback.PredictionLogWriter(
        feedback.make_session_factory(engine), flush_interval_s=0.05, observer=observer, spool=spool
    )
    writer.start()
    for _ in range(5):
        writer.submit([record() for _ in range(20)])
    assert writer.flush(10)  # accepted records are safe on disk
    assert observer.spooled_total == 100 and spool.pending()
    feedback.upgrade(sqlite_url)  # the database "comes back"
    deadline = time.monotonic() + 20
    while observer.replayed_total < 100 and time.monotonic() < deadline:
        time.sleep(0.1)
    writer.submit([record() for _ in range(7)])
    assert writer.flush(10)
    writer.close()
    engine.dispose()
    assert observer.replayed_total == 100 and spool.pending() == []
    assert count_rows(sqlite_url) == 107


def test_leftover_spool_is_replayed_at_start_without_duplicates(
    sqlite_url: str, tmp_path: Path
) -> None:
    feedback.upgrade(sqlite_url)
    engine = feedback.make_engine(sqlite_url)
    sessions = feedback.make_session_factory(engine)
    already = [record() for _ in range(3)]
    with sessions() as session:
        store.insert_predictions(session=session, records=already)
        session.commit()
    spool = feedback.Spool(tmp_path / "spool")
    spool.write(already + [record() for _ in range(5)])  # a crash left this behind
    observer = CountingObserver()
    writer = feedback.PredictionLogWriter(
        sessions, observer=observer, spool=feedback.Spool(tmp_path / "spool")
    )
    writer.start()
    deadline = time.monotonic() + 10
    while observer.replayed_total < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    engine.dispose()
    assert count_rows(sqlite_url) == 8
    assert spool.pending() == []
