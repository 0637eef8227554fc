from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

import storage
from core import database
from storage import store
from storage.models import Prediction
from tests.support import missing, wait_until


def record() -> storage.PredictionRecord:
    return storage.PredictionRecord(
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
        self.quarantined_total = 0
        self.states: list[bool] = []

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

    def quarantined(self, count: int) -> None:
        self.quarantined_total += count

    def degraded(self, is_degraded: bool) -> None:
        self.states.append(is_degraded)


def count_rows(url: str) -> int:
    engine = database.make_engine(url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(Prediction)).scalar_one()
    engine.dispose()
    return int(count)


def test_every_accepted_record_is_written(database_url: str) -> None:
    storage.upgrade(database_url)
    engine = database.make_engine(database_url)
    observer = CountingObserver()
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine), queue_size=5000, batch_size=100, observer=observer
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
    storage.upgrade(sqlite_url)
    engine = database.make_engine(sqlite_url)
    observer = TransactionCounter()
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine), flush_interval_s=1.5, observer=observer
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
    storage.upgrade(sqlite_url)
    engine = database.make_engine(sqlite_url)
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine), batch_size=20, flush_interval_s=60
    )
    writer.start()
    time.sleep(0.1)
    writer.submit([record() for _ in range(20)])
    # At once: a full batch wakes the writer (a wait for the interval is 60 s).
    assert wait_for_rows(sqlite_url, 20, timeout_s=10) < 2.0
    writer.submit([record()])
    assert writer.flush(5)  # a flush does not wait for the interval either
    assert count_rows(sqlite_url) == 21
    writer.close()
    engine.dispose()


def test_full_queue_drops_loudly_and_counts(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage.upgrade(sqlite_url)
    engine = database.make_engine(sqlite_url)
    observer = CountingObserver()
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine), queue_size=10, observer=observer
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
    engine = database.make_engine(sqlite_url)  # no migration yet: inserts fail
    observer = CountingObserver()
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine), flush_interval_s=0.05, observer=observer
    )
    writer.start()
    writer.submit([record() for _ in range(3)])
    assert not writer.flush(0.5)
    assert observer.failures >= 1
    storage.upgrade(sqlite_url)
    assert writer.flush(15)
    writer.close()
    engine.dispose()
    assert count_rows(sqlite_url) == 3


def test_database_down_spools_to_disk_then_replays(sqlite_url: str, tmp_path: Path) -> None:
    engine = database.make_engine(sqlite_url)  # no tables yet: every write fails
    observer = CountingObserver()
    spool = storage.Spool(tmp_path / "spool")
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine), flush_interval_s=0.05, observer=observer, spool=spool
    )
    writer.start()
    for _ in range(5):
        writer.submit([record() for _ in range(20)])
    assert writer.flush(10)  # accepted records are safe on disk
    assert observer.spooled_total == 100 and spool.pending()
    storage.upgrade(sqlite_url)  # the database "comes back"
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
    storage.upgrade(sqlite_url)
    engine = database.make_engine(sqlite_url)
    sessions = database.make_session_factory(engine)
    already = [record() for _ in range(3)]
    with sessions() as session:
        store.insert_predictions(session=session, records=already)
        session.commit()
    spool = storage.Spool(tmp_path / "spool")
    # Every field filled, as a logged prediction of a CRM ticket is.
    new = [
        dataclasses.replace(
            record(), text=f"Zustellung {n}: très déçu 😞", text_storage="raw",
            language="de", external_id=f"T-{n}", external_source="zendesk",
            routing_key_sha256="1" * 64, label="negative", latency_ms=12.5,
            scores={"negative": 0.7, "neutral": 0.2, "positive": 0.1},
            created_at=datetime(2026, 12, 1, 9, 30, n, 250_000, tzinfo=UTC),
        )
        for n in range(5)
    ]  # fmt: skip
    spool.write(already + new)  # a crash left this behind
    observer = CountingObserver()
    writer = storage.PredictionLogWriter(
        sessions, observer=observer, spool=storage.Spool(tmp_path / "spool")
    )
    writer.start()
    deadline = time.monotonic() + 10
    while observer.replayed_total < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert count_rows(sqlite_url) == 8
    assert spool.pending() == []
    # The three already stored were skipped, not refused as duplicates and quarantined.
    assert observer.quarantined_total == 0 and not spool.quarantine_directory.exists()
    # The replayed rows are the records, field by field.
    with sessions() as session:
        stored = {row.id: row for row in session.scalars(select(Prediction))}
    engine.dispose()
    for original in new:
        row = stored[original.id]
        assert row.created_at.replace(tzinfo=UTC) == original.created_at
        for name in ("text", "text_storage", "text_sha256", "label", "scores", "model_version",
                     "template_version", "latency_ms", "routing_key_sha256", "language",
                     "external_id", "external_source"):  # fmt: skip
            assert getattr(row, name) == getattr(original, name), name


def poison_record() -> storage.PredictionRecord:
    """A record no database takes: a NUL (PostgreSQL refuses it) next to a lone
    surrogate (no UTF-8 encoder takes it)."""
    good = record()
    return storage.PredictionRecord(
        **{**vars(good), "text": "poison \x00 \ud800", "text_storage": "raw"}
    )


def test_a_row_the_database_refuses_is_quarantined_and_the_rest_written(
    database_url: str, tmp_path: Path
) -> None:
    storage.upgrade(database_url)
    engine = database.make_engine(database_url)
    observer = CountingObserver()
    spool = storage.Spool(tmp_path / "spool")
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine), observer=observer, spool=spool
    )
    writer.start()
    batch = [record() for _ in range(40)]
    batch[17] = poison_record()
    writer.submit(batch)
    assert writer.flush(20)
    writer.submit([record() for _ in range(5)])  # and the log keeps going
    assert writer.flush(20)
    writer.close()
    engine.dispose()
    assert count_rows(database_url) == 44
    assert observer.quarantined_total == 1
    quarantined = list((tmp_path / "spool" / "quarantine").glob("*.jsonl"))
    assert len(quarantined) == 1
    assert batch[17].id in quarantined[0].read_text()
    assert spool.pending() == []  # nothing left to retry for ever


def test_a_poison_row_in_the_spool_does_not_block_the_records_behind_it(
    database_url: str, tmp_path: Path
) -> None:
    storage.upgrade(database_url)
    spool = storage.Spool(tmp_path / "spool")
    spooled = [record() for _ in range(30)]
    spooled[3] = poison_record()
    spool.write(spooled[:10])
    spool.write(spooled[10:])
    (tmp_path / "spool" / "torn.jsonl").write_text('{"id": "torn', encoding="utf-8")
    engine = database.make_engine(database_url)
    observer = CountingObserver()
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine), observer=observer, spool=spool
    )
    writer.start()
    assert wait_until(lambda: not spool.pending())
    writer.close()
    engine.dispose()
    assert count_rows(database_url) == 29
    assert observer.quarantined_total == 1
    kept = "".join(p.read_text() for p in spool.quarantine_directory.glob("*.jsonl"))
    assert spooled[3].id in kept and "torn" in kept


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 kB tmpfs: a disk that can be filled and freed (needs root)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        missing(
            f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}",
            required_by="SENTILOOP_REQUIRE_ROOT",
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    return filler


def test_a_full_disk_under_the_database_and_the_spool_loses_nothing_and_recovers(
    tiny_disk: Path,
) -> None:
    """The SQLite file and the spool share a disk that fills up: writes and spooling
    both fail. The writer keeps the records in memory, says it is degraded, and writes
    them once space returns; its thread never dies."""
    url = f"sqlite:///{tiny_disk / 'sentiloop.db'}"
    storage.upgrade(url)
    engine = database.make_engine(url)
    observer = CountingObserver()
    spool = storage.Spool(tiny_disk / "spool")
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine),
        observer=observer,
        spool=spool,
        flush_interval_s=0.05,
    )
    writer.start()
    filler = fill(tiny_disk)
    for _ in range(10):
        writer.submit([record() for _ in range(20)])
    assert wait_until(lambda: not writer.healthy)
    assert "failed" in (writer.problem or "")
    filler.unlink()  # space returns
    assert writer.flush(30)
    assert wait_until(lambda: writer.healthy and not spool.pending(), 30)
    writer.submit([record() for _ in range(3)])
    assert writer.flush(10)
    writer.close()
    engine.dispose()
    assert count_rows(url) == 203
    assert writer.stats.dropped == 0
    assert observer.states[0] is True and observer.states[-1] is False


def test_a_sqlite_file_made_read_only_then_writable_again_recovers_without_a_restart(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "db"
    url = f"sqlite:///{folder / 'sentiloop.db'}"
    storage.upgrade(url)
    engine = database.make_engine(url)
    writer = storage.PredictionLogWriter(
        database.make_session_factory(engine),
        spool=storage.Spool(tmp_path / "spool"),
        flush_interval_s=0.05,
    )
    writer.start()
    writer.submit([record()])
    assert writer.flush(10)
    # The file and its write-ahead log (not the -shm file: an immutable shared mapping
    # gets the process killed with SIGBUS instead of a failed write).
    files = [str(folder / name) for name in ("sentiloop.db", "sentiloop.db-wal")]
    if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
        missing("chattr +i is not available here", required_by="SENTILOOP_REQUIRE_ROOT")
    try:
        engine.dispose()  # the next connections are opened while the file is read-only
        writer.submit([record() for _ in range(5)])
        assert wait_until(lambda: not writer.healthy)
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    writer.submit([record() for _ in range(4)])
    assert wait_until(lambda: writer.healthy, 30)
    assert writer.flush(10)
    writer.close()
    engine.dispose()
    assert count_rows(url) == 10


def test_spool_files_of_other_live_processes_are_left_to_them(tmp_path: Path) -> None:
    """A live worker may still append to its spool file (a rename would not stop it):
    only this process's files and those of processes that are gone are replayed."""
    spool = storage.Spool(tmp_path / "spool")
    spool.write([record()])
    folder = tmp_path / "spool"
    live_other = folder / "spool-1-abc.jsonl"  # pid 1 is always alive
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = folder / f"spool-{dead.pid}-def.jsonl"
    for path in (live_other, gone):
        path.write_text("", encoding="utf-8")
    pending = set(spool.pending())
    assert gone in pending and live_other not in pending
    assert any(path.name.startswith(f"spool-{os.getpid()}-") for path in pending)
