"""Training runs recorded in the database, and a lease lock so only one runs at once."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core import processes
from storage.ids import time_ordered_id
from storage.models import Feedback, Lock, TrainingRun
from storage.store import as_utc, utcnow

logger = logging.getLogger(__name__)


class LockHeld(Exception):
    def __init__(self, name: str, holder: str, expires_at: datetime) -> None:
        super().__init__(
            f"lock {name!r} is held by {holder} until {as_utc(expires_at).isoformat()} "
            f"(if that process is gone: `sentiloop locks break {name}`)"
        )
        self.holder = holder


class LeaseLost(RuntimeError):
    """The lock was broken or taken over while its holder worked under it."""


@dataclass(frozen=True)
class LockState:
    name: str
    holder: str
    expires_at: datetime
    # Why another process may take it now: "expired", "holder gone", or None (held).
    stale: str | None


def _stale(holder: str, expires_at: datetime, now: datetime) -> str | None:
    if as_utc(expires_at) < now:
        return "expired"
    if processes.is_gone(holder):
        return "holder gone"
    return None


def acquire_lock(
    *, session_factory: sessionmaker[Session], name: str, holder: str, ttl: timedelta
) -> str | None:
    """Take the lease ``name`` or raise ``LockHeld``. A lease that expired (its holder
    stopped renewing it: another host died) or whose holder is a process of this host
    that no longer runs (SIGKILL) is taken over, and the holder it was taken from is
    returned (None when the lock was free). The takeover is a conditional update on the
    old holder, so two processes taking over at once cannot both win."""
    now = utcnow()
    with session_factory() as session:
        session.add(Lock(name=name, holder=holder, expires_at=now + ttl))
        try:
            session.commit()
            return None
        except IntegrityError:
            session.rollback()
        current = session.get(Lock, name)
        if current is None:  # released meanwhile; the caller may retry
            raise LockHeld(name, "another process", now)
        stale = _stale(current.holder, current.expires_at, now)
        if stale is None:
            raise LockHeld(name, current.holder, current.expires_at)
        previous = current.holder
        condition = [Lock.name == name, Lock.holder == previous]
        if stale == "expired":
            condition.append(Lock.expires_at < now)  # not renewed since it was read
        result = session.execute(
            update(Lock)
            .where(*condition)
            .values(holder=holder, expires_at=now + ttl)
            .execution_options(synchronize_session=False)
        )
        if not cast(CursorResult[Any], result).rowcount:
            session.rollback()
            raise LockHeld(name, "another process", now)
        session.commit()
    logger.warning("took over lock %r from %s (%s)", name, previous, stale)
    return previous


def renew_lock(
    *, session_factory: sessionmaker[Session], name: str, holder: str, ttl: timedelta
) -> bool:
    """Extend the lease ``holder`` holds; False when it holds it no longer."""
    with session_factory() as session:
        result = session.execute(
            update(Lock)
            .where(Lock.name == name, Lock.holder == holder)
            .values(expires_at=utcnow() + ttl)
        )
        session.commit()
        return bool(cast(CursorResult[Any], result).rowcount)


def release_lock(*, session_factory: sessionmaker[Session], name: str, holder: str) -> None:
    with session_factory() as session:
        session.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder))
        session.commit()


def list_locks(*, session: Session) -> list[LockState]:
    now = utcnow()
    return [
        LockState(row.name, row.holder, as_utc(row.expires_at),
                  _stale(row.holder, row.expires_at, now))
        for row in session.scalars(select(Lock).order_by(Lock.name))
    ]  # fmt: skip


def break_lock(*, session_factory: sessionmaker[Session], name: str) -> LockState | None:
    """Remove the lock ``name`` whoever holds it (the operator's call); what it was.
    A live holder finds out at its next renewal (``Lease.lost``)."""
    with session_factory() as session:
        current = next((lock for lock in list_locks(session=session) if lock.name == name), None)
        if current is None:
            return None
        session.execute(delete(Lock).where(Lock.name == name, Lock.holder == current.holder))
        session.commit()
    logger.warning("lock %r held by %s broken", name, current.holder)
    return current


class Lease:
    """The lock ``name`` held by this process for a block of work, with a short ``ttl``
    renewed every ``ttl / 4`` by a heartbeat thread: a holder that dies without
    releasing it (SIGKILL, a lost machine) frees it within ``ttl`` (at once on its own
    host, where a dead process id is seen), instead of blocking everyone for a long
    fixed lease. The heartbeat survives database errors and keeps trying until the
    lease would have expired; then, or when a renewal finds the lock broken or taken
    over, ``lost`` says why, and ``check`` raises ``LeaseLost``: the holder calls it
    before acting on what it did under the lock."""

    def __init__(
        self, *, session_factory: sessionmaker[Session], name: str, ttl: timedelta
    ) -> None:
        self.session_factory = session_factory
        self.name = name
        self.ttl = ttl
        self.holder = processes.process_identity()
        self.lost: str | None = None
        self.taken_over_from: str | None = None
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-{name}", daemon=True)

    def acquire(self) -> None:
        """Take the lock (``LockHeld`` if it is held) and start renewing it."""
        self.taken_over_from = acquire_lock(
            session_factory=self.session_factory, name=self.name, holder=self.holder,
            ttl=self.ttl,
        )  # fmt: skip
        self._heartbeat.start()

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat.is_alive():
            self._heartbeat.join(timeout=self.ttl.total_seconds())
        release_lock(session_factory=self.session_factory, name=self.name, holder=self.holder)

    def check(self) -> None:
        if self.lost is not None:
            raise LeaseLost(f"lock {self.name!r} lost while held: {self.lost}")

    def _beat(self) -> None:
        interval = self.ttl.total_seconds() / 4
        renewed = time.monotonic()
        while not self._stop.wait(interval):
            try:
                held = renew_lock(
                    session_factory=self.session_factory, name=self.name, holder=self.holder,
                    ttl=self.ttl,
                )  # fmt: skip
            except Exception as exc:  # the database may come back before the lease ends
                logger.warning("renewing lock %r failed: %s", self.name, exc)
                if time.monotonic() - renewed < self.ttl.total_seconds():
                    continue
                self.lost = f"not renewed for {self.ttl} ({type(exc).__name__})"
            else:
                if held:
                    renewed = time.monotonic()
                    continue
                self.lost = "broken (`sentiloop locks break`) or taken over"
            logger.error("lock %r lost: %s", self.name, self.lost)
            return


def start_run(*, session: Session, trigger: str, feedback_cutoff: datetime) -> str:
    run = TrainingRun(
        id=time_ordered_id(),
        started_at=utcnow(),
        trigger=trigger,
        status="running",
        feedback_cutoff=feedback_cutoff,
        counts={},
        metrics={},
    )
    session.add(run)
    session.commit()
    return run.id


def finish_run(*, session: Session, run_id: str, **fields: Any) -> None:
    """Record the outcome (status, counts, metrics, decision, reason, tags, error)."""
    session.execute(
        update(TrainingRun).where(TrainingRun.id == run_id).values(finished_at=utcnow(), **fields)
    )
    session.commit()


def fail_abandoned_runs(*, session: Session, error: str) -> int:
    """Mark failed the runs still ``running``; called under the training lock, where no
    other run can be running: these were left by a process that died (SIGKILL) or
    whose lock was broken. How many."""
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.status == "running")
        .values(status="failed", finished_at=utcnow(), error=error)
    )
    session.commit()
    return cast(CursorResult[Any], result).rowcount


def list_runs(*, session: Session, limit: int = 20) -> list[TrainingRun]:
    return list(
        session.scalars(select(TrainingRun).order_by(TrainingRun.started_at.desc()).limit(limit))
    )


def last_successful_cutoff(*, session: Session) -> datetime | None:
    """The feedback cut-off of the newest successful run (what it had seen)."""
    return session.scalar(
        select(TrainingRun.feedback_cutoff)
        .where(TrainingRun.status == "succeeded")
        .order_by(TrainingRun.started_at.desc())
        .limit(1)
    )


def count_feedback_since(*, session: Session, since: datetime | None) -> int:
    query = select(func.count()).select_from(Feedback)
    if since is not None:
        query = query.where(Feedback.created_at > since)
    return int(session.scalar(query) or 0)
