"""Writes prediction records to the database off the request path.

Requests hand records to a bounded queue and return at once; one background
thread writes them in batches. When the queue is full the records are not
queued: the writer counts them, logs a warning and tells its observer, so a
drop is never silent.

The writer thread is not woken per record: it sleeps until a batch is full, the
flush interval has passed, someone waits in ``flush`` or the writer closes. On
a busy server a wake-up per record cost more than the write itself, as every
wake-up takes the GIL from the event loop that serves the requests.

When a write fails (the database is down) and a spool is configured, the batch
goes to the disk spool instead, and so do later batches until a probe write
succeeds; then the spooled records are replayed into the database (records
already there are skipped). Without a spool a failed write is retried with
backoff, keeping the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.models import Prediction
from feedback.records import PredictionRecord
from feedback.spool import Spool
from feedback.store import insert_predictions

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0
_MIN_PROBE_S = 0.5


class LogWriterObserver(Protocol):
    def written(self, count: int, seconds: float) -> None: ...

    def dropped(self, count: int) -> None: ...

    def write_failed(self) -> None: ...

    def queue_depth(self, depth: int) -> None: ...

    def spooled(self, count: int) -> None: ...

    def replayed(self, count: int) -> None: ...


class _SilentObserver:
    def written(self, count: int, seconds: float) -> None:
        pass

    def dropped(self, count: int) -> None:
        pass

    def write_failed(self) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass

    def spooled(self, count: int) -> None:
        pass

    def replayed(self, count: int) -> None:
        pass


@dataclass
class LogWriterStats:
    accepted: int = 0
    written: int = 0
    dropped: int = 0
    failed_writes: int = 0
    spooled: int = 0
    replayed: int = 0


class PredictionLogWriter:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.2,
        observer: LogWriterObserver | None = None,
        spool: Spool | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._spool = spool
        self._spooling = False
        self._next_probe = 0.0
        self._probe_backoff = _MIN_PROBE_S
        self._queue: deque[PredictionRecord] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._observer: LogWriterObserver = observer or _SilentObserver()
        self._stats = LogWriterStats()
        # Guards the queue's bound and the counters; flush() waits on it for progress.
        self._progress = threading.Condition(threading.Lock())
        self._flushers = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)

    @property
    def stats(self) -> LogWriterStats:
        with self._progress:
            return LogWriterStats(**vars(self._stats))

    def start(self) -> None:
        self._thread.start()

    def submit(self, records: Sequence[PredictionRecord]) -> int:
        """Queue records without blocking; returns how many were accepted."""
        with self._progress:
            accepted = min(len(records), max(0, self._queue_size - len(self._queue)))
            self._queue.extend(records[:accepted])
            self._stats.accepted += accepted
            dropped = len(records) - accepted
            self._stats.dropped += dropped
            batch_ready = len(self._queue) >= self._batch_size
        if batch_ready and not self._wake.is_set():
            self._wake.set()
        if dropped:
            logger.warning(
                "prediction log queue full (%d records): %d prediction records not logged",
                self._queue_size,
                dropped,
            )
            self._observer.dropped(dropped)
        return accepted

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything accepted so far is written or spooled; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._progress:
            target = self._stats.accepted
            self._flushers += 1
            self._wake.set()
            try:
                while self._stats.written + self._stats.spooled < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._progress.wait(remaining)
            finally:
                self._flushers -= 1
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to ``timeout_s``) and stop the thread."""
        self.flush(timeout_s)
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        left = len(self._queue)
        if left:
            logger.error("prediction log writer stopped with %d records unwritten", left)

    def _should_wait(self) -> bool:
        if self._stopping.is_set():
            return False
        return not self._queue or (len(self._queue) < self._batch_size and self._flushers == 0)

    def _next_batch(self) -> list[PredictionRecord]:
        """Up to ``batch_size`` records, once a batch is full, the flush interval has
        passed, a caller flushes or the writer stops: a steady stream is written in a
        few large transactions, with few wake-ups of this thread."""
        if self._should_wait():
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
        batch: list[PredictionRecord] = []
        while self._queue and len(batch) < self._batch_size:
            batch.append(self._queue.popleft())
        return batch

    def _insert(self, batch: list[PredictionRecord]) -> None:
        """Write ``batch`` in one transaction and count it written; raises on failure."""
        started = time.perf_counter()
        with self._session_factory() as session:
            insert_predictions(session=session, records=batch)
            session.commit()
        self._observer.written(len(batch), time.perf_counter() - started)
        with self._progress:
            self._stats.written += len(batch)
            self._progress.notify_all()

    def _count_failed_write(self) -> None:
        with self._progress:
            self._stats.failed_writes += 1
        self._observer.write_failed()

    def _to_spool(self, batch: list[PredictionRecord]) -> None:
        assert self._spool is not None
        self._spool.write(batch)
        self._observer.spooled(len(batch))
        with self._progress:
            self._stats.spooled += len(batch)
            self._progress.notify_all()

    def _write_or_spool(self, batch: list[PredictionRecord]) -> None:
        if self._spooling and time.monotonic() < self._next_probe:
            self._to_spool(batch)
            return
        try:
            self._insert(batch)
        except Exception as exc:
            self._count_failed_write()
            if not self._spooling:
                logger.error("database write failed (%s); spooling prediction records to %s",
                             exc, self._spool.directory if self._spool else None)  # fmt: skip
            self._spooling = True
            self._next_probe = time.monotonic() + self._probe_backoff
            self._probe_backoff = min(self._probe_backoff * 2, _MAX_BACKOFF_S)
            self._to_spool(batch)
            return
        if self._spooling:
            logger.info("database writes succeed again; replaying the spool")
        self._spooling = False
        self._probe_backoff = _MIN_PROBE_S
        self._replay_spool()

    def _replay_spool(self) -> None:
        assert self._spool is not None
        for path in self._spool.pending():
            claimed = self._spool.claim(path)
            if claimed is None:
                continue
            records = self._spool.read(claimed)
            try:
                for start in range(0, len(records), self._batch_size):
                    chunk = records[start : start + self._batch_size]
                    with self._session_factory() as session:
                        known = set(
                            session.scalars(
                                select(Prediction.id).where(
                                    Prediction.id.in_([r.id for r in chunk])
                                )
                            )
                        )
                        insert_predictions(
                            session=session, records=[r for r in chunk if r.id not in known]
                        )
                        session.commit()
            except Exception:
                logger.exception("replaying %s failed; it stays in the spool", claimed.name)
                self._spool.release(claimed)
                self._spooling = True
                self._next_probe = time.monotonic() + self._probe_backoff
                return
            claimed.unlink()
            self._observer.replayed(len(records))
            with self._progress:
                self._stats.replayed += len(records)
            logger.info("replayed %d spooled prediction records", len(records))

    def _write(self, batch: list[PredictionRecord]) -> None:
        if self._spool is not None:
            self._write_or_spool(batch)
            return
        backoff = 0.05
        while True:
            try:
                self._insert(batch)
                return
            except Exception:
                self._count_failed_write()
                logger.exception(
                    "writing %d prediction records failed; retrying in %.2fs", len(batch), backoff
                )
                if self._stopping.wait(backoff):
                    logger.error("prediction log writer stopping: %d records lost", len(batch))
                    return
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _probe(self) -> None:
        """With no traffic, check whether the database is back, then replay."""
        try:
            with self._session_factory() as session:
                session.execute(select(1))
        except Exception:
            self._next_probe = time.monotonic() + self._probe_backoff
            self._probe_backoff = min(self._probe_backoff * 2, _MAX_BACKOFF_S)
            return
        self._spooling = False
        self._probe_backoff = _MIN_PROBE_S
        self._replay_spool()

    def _run(self) -> None:
        if self._spool is not None and self._spool.pending():
            try:  # records a previous process (or a crash) left behind
                self._replay_spool()
            except Exception:
                logger.exception("replaying the spool at start failed")
        while not (self._stopping.is_set() and not self._queue):
            batch = self._next_batch()
            if batch:
                self._write(batch)
            elif self._spooling and time.monotonic() >= self._next_probe:
                self._probe()
            self._observer.queue_depth(len(self._queue))
