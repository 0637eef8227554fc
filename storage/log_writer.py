"""Writes prediction records to the database off the request path.

Requests hand records to a bounded queue and return at once; one background
thread writes them in batches. When the queue is full the records are not
queued: the writer counts them, logs a warning and tells its observer, so a
drop is never silent.

The writer thread is not woken per record: it sleeps until a batch is full, the
flush interval has passed, someone waits in ``flush`` or the writer closes. On
a busy server a wake-up per record cost more than the write itself, as every
wake-up takes the GIL from the event loop that serves the requests.

Failures, and what the writer does about them:

* **The database is unavailable** (down, read-only, disk full, no schema): the
  writer is *degraded*. Batches go to the disk spool instead, and so do later
  batches until a write succeeds again (tried with backoff); then the spooled
  records are replayed (records already there are skipped). Without a spool, or
  when the spool cannot be written either (a full disk), the batch is kept in
  memory and tried again; the queue's bound still holds, and what overflows is
  counted as dropped.
* **A row the database refuses** (a value it cannot store): the batch is split
  in halves until the row is isolated; the row goes to the spool's quarantine
  folder, is counted and logged, and is never retried. The rows around it are
  written.
* **Anything else**: caught, counted and logged; the thread never dies. Each
  kind of failure is logged once when it starts and once when it ends.

``healthy`` is False while degraded (``/readyz`` uses it), and the observer
hears every change of state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from core.database import describe_error
from storage.models import Prediction
from storage.records import PredictionRecord
from storage.spool import Spool
from storage.store import insert_predictions

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0
_MIN_BACKOFF_S = 0.5


class LogWriterObserver(Protocol):
    def written(self, count: int, seconds: float) -> None: ...

    def dropped(self, count: int) -> None: ...

    def write_failed(self) -> None: ...

    def queue_depth(self, depth: int) -> None: ...

    def spooled(self, count: int) -> None: ...

    def replayed(self, count: int) -> None: ...

    def quarantined(self, count: int) -> None: ...

    def degraded(self, is_degraded: bool) -> None: ...


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

    def quarantined(self, count: int) -> None:
        pass

    def degraded(self, is_degraded: bool) -> None:
        pass


@dataclass
class LogWriterStats:
    accepted: int = 0
    written: int = 0
    dropped: int = 0
    failed_writes: int = 0
    spooled: int = 0
    replayed: int = 0
    quarantined: int = 0


class _Guarded:
    """Passes calls on to an observer; an observer that raises is logged, never
    allowed to stop the writer."""

    def __init__(self, observer: LogWriterObserver) -> None:
        self._observer = observer

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._observer, name)

        def guarded(*args: Any) -> None:
            try:
                method(*args)
            except Exception:
                logger.exception("prediction log observer failed in %s", name)

        return guarded


def is_row_error(error: BaseException) -> bool:
    """True when the database refused a value (the row is at fault, not the database).

    ``DataError``/``IntegrityError`` come from the database; encoding and type
    errors from the driver before anything is sent (they may arrive unwrapped).
    Everything else (connection, read-only, disk full, missing schema) means the
    database cannot take writes now.
    """
    if isinstance(error, DataError | IntegrityError):
        return True
    if isinstance(error, StatementError):
        return isinstance(error.orig, ValueError | TypeError)
    return isinstance(error, ValueError | TypeError)  # UnicodeEncodeError is a ValueError


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
        self._queue: deque[PredictionRecord] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._observer: LogWriterObserver = _Guarded(observer or _SilentObserver())
        self._stats = LogWriterStats()
        # Guards the queue's bound and the counters; flush() waits on it for progress.
        self._progress = threading.Condition(threading.Lock())
        self._flushers = 0
        # Accepted records that reached the database, the spool or the quarantine.
        self._settled = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        # Degraded state: why, since when, and when to try the database again.
        self._problem: str | None = None
        self._problem_since = 0.0
        self._next_try = 0.0
        self._backoff = _MIN_BACKOFF_S

    @property
    def stats(self) -> LogWriterStats:
        with self._progress:
            return LogWriterStats(**vars(self._stats))

    @property
    def healthy(self) -> bool:
        """False while writes fail (records wait in the spool or in memory) or the
        thread is not running."""
        return self._problem is None and self._thread.is_alive()

    @property
    def problem(self) -> str | None:
        if not self._thread.is_alive():
            return "the prediction log writer is not running"
        return self._problem

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
        """Wait until everything accepted so far is written, spooled or quarantined;
        False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._progress:
            target = self._stats.accepted
            self._flushers += 1
            self._wake.set()
            try:
                while self._settled < target:
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
            logger.error("prediction log writer stopped with %d records unwritten (%s)",
                         left, self._problem or "no time left")  # fmt: skip

    # --- state --------------------------------------------------------------------

    def _failed(self, what: str, error: BaseException) -> None:
        """Count a failure; log it when it starts or changes, then back off."""
        with self._progress:
            self._stats.failed_writes += 1
        self._observer.write_failed()
        problem = f"{what} failed ({describe_error(error)})"
        if problem != self._problem:
            logger.error("prediction log degraded: %s; %s", problem, self._plan())
        if self._problem is None:
            self._problem_since = time.monotonic()
            self._observer.degraded(True)
        self._problem = problem
        self._next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)

    def _plan(self) -> str:
        if self._spool is None:
            return "keeping the records in memory and retrying"
        return f"spooling records to {self._spool.directory} and retrying"

    def _recovered(self) -> None:
        if self._problem is not None:
            logger.info("prediction log recovered after %.1fs (was: %s)",
                        time.monotonic() - self._problem_since, self._problem)  # fmt: skip
            self._problem = None
            self._observer.degraded(False)
        self._backoff = _MIN_BACKOFF_S

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not (self._stopping.is_set() and not self._queue):
            batch: list[PredictionRecord] = []
            try:
                batch = self._next_batch()
                self._step(batch)
            except Exception as exc:  # never die: keep the batch, count, log, back off
                with self._progress:
                    self._queue.extendleft(reversed(batch))
                self._failed("prediction log writer step", exc)
                self._stopping.wait(self._backoff)
            self._observer.queue_depth(len(self._queue))

    def _step(self, batch: list[PredictionRecord]) -> None:
        if batch:
            self._write(batch)
        elif time.monotonic() >= self._next_try and (
            self._problem is not None or (self._spool is not None and self._spool.pending())
        ):
            self._try_database()

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
        with self._progress:
            while self._queue and len(batch) < self._batch_size:
                batch.append(self._queue.popleft())
        return batch

    def _write(self, batch: list[PredictionRecord]) -> None:
        if self._problem is not None and time.monotonic() < self._next_try:
            self._park(batch)  # not yet time to try the database again
            return
        try:
            self._insert_isolating(batch, fresh=True)
        except Exception as exc:
            self._failed("database write", exc)
            self._park(batch)
            return
        self._recovered()
        self._replay_spool()

    def _try_database(self) -> None:
        """While degraded and idle: replay the spool (a real write), or check that the
        database answers when nothing waits to be written."""
        try:
            if self._spool is not None and self._spool.pending():
                self._replay_spool(raise_errors=True)
            elif not self._queue:
                with self._session_factory() as session:
                    session.execute(select(1))
        except Exception as exc:
            self._failed("database write", exc)
            return
        if not self._queue:
            self._recovered()

    # --- writing ------------------------------------------------------------------------

    def _insert(self, batch: Sequence[PredictionRecord], *, fresh: bool) -> None:
        """Write ``batch`` in one transaction; raises on failure. ``fresh``: records from
        the queue (counted written), not from the spool (counted replayed)."""
        started = time.perf_counter()
        with self._session_factory() as session:
            insert_predictions(session=session, records=batch)
            session.commit()
        if fresh:
            self._observer.written(len(batch), time.perf_counter() - started)
            with self._progress:
                self._stats.written += len(batch)
                self._settled += len(batch)
                self._progress.notify_all()

    def _insert_isolating(self, batch: Sequence[PredictionRecord], *, fresh: bool) -> None:
        """Write ``batch``; a row the database refuses is isolated by halving the batch
        and quarantined, and the others are written. Raises when the database is
        unavailable."""
        if not batch:
            return
        try:
            self._insert(batch, fresh=fresh)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            if len(batch) == 1:
                self._quarantine(batch, exc, fresh=fresh)
                return
            middle = len(batch) // 2
            self._insert_isolating(batch[:middle], fresh=fresh)
            self._insert_isolating(batch[middle:], fresh=fresh)

    def _quarantine(
        self, records: Sequence[PredictionRecord], error: BaseException, *, fresh: bool
    ) -> None:
        reason = describe_error(error)
        if self._spool is not None:
            path = self._spool.quarantine(records, reason)  # raises OSError: the caller parks
            where = f"kept in {path}"
        else:
            where = "not kept (no spool configured)"
        logger.error("prediction record %s refused by the database (%s); %s",
                     ", ".join(r.id for r in records), reason, where)  # fmt: skip
        self._observer.quarantined(len(records))
        with self._progress:
            self._stats.quarantined += len(records)
            if fresh:
                self._settled += len(records)
            self._progress.notify_all()

    def _park(self, batch: list[PredictionRecord]) -> None:
        """Spool ``batch``; if the spool cannot take it (full disk), keep it in memory."""
        if self._spool is not None:
            try:
                self._spool.write(batch)
            except OSError as exc:
                self._failed("spool write", exc)
            else:
                self._observer.spooled(len(batch))
                with self._progress:
                    self._stats.spooled += len(batch)
                    self._settled += len(batch)
                    self._progress.notify_all()
                return
        if self._stopping.is_set():
            logger.error("prediction log writer stopping: %d records lost (%s)",
                         len(batch), self._problem)  # fmt: skip
            self._observer.dropped(len(batch))
            with self._progress:
                self._stats.dropped += len(batch)
            return
        with self._progress:
            self._queue.extendleft(reversed(batch))
        self._stopping.wait(max(0.0, self._next_try - time.monotonic()))

    def _replay_spool(self, *, raise_errors: bool = False) -> None:
        """Write spooled records back into the database, oldest file first."""
        if self._spool is None:
            return
        for path in self._spool.pending():
            claimed = self._spool.claim(path)
            if claimed is None:
                continue
            try:
                records, unreadable = self._spool.read(claimed)
                if unreadable:
                    self._spool.quarantine_lines(unreadable, f"unreadable line in {path.name}")
                    logger.error("%d unreadable lines of %s moved to the quarantine",
                                 len(unreadable), path.name)  # fmt: skip
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
                    self._insert_isolating([r for r in chunk if r.id not in known], fresh=False)
            except Exception as exc:
                self._spool.release(claimed)
                if raise_errors:
                    raise
                self._failed(f"replaying {path.name}", exc)
                return
            claimed.unlink()
            self._observer.replayed(len(records))
            with self._progress:
                self._stats.replayed += len(records)
            logger.info("replayed %d spooled prediction records", len(records))
