"""Writes prediction records to the database off the request path.

Requests hand records to a bounded queue and return at once; one background
thread writes them in batches. When the queue is full the records are not
queued: the writer counts them, logs a warning and tells its observer, so a
drop is never silent. A failed write is retried with backoff, keeping the batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from feedback.records import PredictionRecord
from feedback.store import insert_predictions

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0


class LogWriterObserver(Protocol):
    def written(self, count: int, seconds: float) -> None: ...

    def dropped(self, count: int) -> None: ...

    def write_failed(self) -> None: ...

    def queue_depth(self, depth: int) -> None: ...


class _SilentObserver:
    def written(self, count: int, seconds: float) -> None:
        pass

    def dropped(self, count: int) -> None:
        pass

    def write_failed(self) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass


@dataclass
class LogWriterStats:
    accepted: int = 0
    written: int = 0
    dropped: int = 0
    failed_writes: int = 0


class PredictionLogWriter:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_interval_s: float = 0.2,
        observer: LogWriterObserver | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._queue: queue.Queue[PredictionRecord] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._observer: LogWriterObserver = observer or _SilentObserver()
        self._stats = LogWriterStats()
        self._progress = threading.Condition()
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
        accepted = 0
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                break
            accepted += 1
        dropped = len(records) - accepted
        with self._progress:
            self._stats.accepted += accepted
            self._stats.dropped += dropped
        if dropped:
            logger.warning(
                "prediction log queue full (%d records): %d prediction records not logged",
                self._queue.maxsize,
                dropped,
            )
            self._observer.dropped(dropped)
        self._observer.queue_depth(self._queue.qsize())
        return accepted

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything accepted so far is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._progress:
            target = self._stats.accepted
            while self._stats.written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (up to ``timeout_s``) and stop the thread."""
        self.flush(timeout_s)
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        left = self._queue.qsize()
        if left:
            logger.error("prediction log writer stopped with %d records unwritten", left)

    def _next_batch(self) -> list[PredictionRecord]:
        try:
            batch = [self._queue.get(timeout=self._flush_interval_s)]
        except queue.Empty:
            return []
        while len(batch) < self._batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[PredictionRecord]) -> None:
        backoff = 0.05
        while True:
            started = time.perf_counter()
            try:
                with self._session_factory() as session:
                    insert_predictions(session=session, records=batch)
                    session.commit()
            except Exception:
                with self._progress:
                    self._stats.failed_writes += 1
                self._observer.write_failed()
                logger.exception(
                    "writing %d prediction records failed; retrying in %.2fs", len(batch), backoff
                )
                if self._stopping.wait(backoff):
                    logger.error("prediction log writer stopping: %d records lost", len(batch))
                    return
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                continue
            self._observer.written(len(batch), time.perf_counter() - started)
            with self._progress:
                self._stats.written += len(batch)
                self._progress.notify_all()
            return

    def _run(self) -> None:
        while not (self._stopping.is_set() and self._queue.empty()):
            batch = self._next_batch()
            if batch:
                self._write(batch)
            self._observer.queue_depth(self._queue.qsize())
