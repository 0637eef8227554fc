"""Training runs recorded in the database, and a lease lock so only one runs at once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.ids import time_ordered_id
from storage.models import Feedback, Lock, TrainingRun
from storage.store import utcnow


class LockHeld(Exception):
    def __init__(self, name: str, holder: str, expires_at: datetime) -> None:
        super().__init__(f"lock {name!r} is held by {holder} until {expires_at.isoformat()}")
        self.holder = holder


def acquire_lock(
    *, session_factory: sessionmaker[Session], name: str, holder: str, ttl: timedelta
) -> None:
    """Take the lease ``name`` or raise ``LockHeld``; an expired lease is taken over."""
    now = utcnow()
    with session_factory() as session:
        result = session.execute(
            update(Lock)
            .where(Lock.name == name, Lock.expires_at < now)
            .values(holder=holder, expires_at=now + ttl)
        )
        taken = cast(CursorResult[Any], result).rowcount
        if taken:
            session.commit()
            return
        session.add(Lock(name=name, holder=holder, expires_at=now + ttl))
        try:
            session.commit()
            return
        except IntegrityError:
            session.rollback()
        current = session.get(Lock, name)
        if current is None:  # released meanwhile; the caller may retry
            raise LockHeld(name, "another process", now)
        raise LockHeld(name, current.holder, current.expires_at)


def release_lock(*, session_factory: sessionmaker[Session], name: str, holder: str) -> None:
    with session_factory() as session:
        session.execute(delete(Lock).where(Lock.name == name, Lock.holder == holder))
        session.commit()


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
