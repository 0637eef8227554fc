"""Which model is champion and which is challenger, as an append-only history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import ModelAssignment
from storage.store import as_utc, utcnow

Role = Literal["champion", "challenger"]


@dataclass(frozen=True)
class Assignment:
    id: int
    created_at: datetime
    role: str
    model_tag: str | None
    reason: str
    training_run_id: str | None


def _assignment(row: ModelAssignment) -> Assignment:
    return Assignment(
        id=row.id,
        created_at=as_utc(row.created_at),
        role=row.role,
        model_tag=row.model_tag,
        reason=row.reason,
        training_run_id=row.training_run_id,
    )


def assign(
    *,
    session: Session,
    role: Role,
    model_tag: str | None,
    reason: str,
    training_run_id: str | None = None,
) -> Assignment:
    """Make ``model_tag`` the current ``role`` (None clears the role); the caller commits."""
    row = ModelAssignment(
        created_at=utcnow(),
        role=role,
        model_tag=model_tag,
        reason=reason,
        training_run_id=training_run_id,
    )
    session.add(row)
    session.flush()
    return _assignment(row)


def current(*, session: Session, role: Role) -> str | None:
    """The model tag currently holding ``role``, or None."""
    row = session.scalars(
        select(ModelAssignment)
        .where(ModelAssignment.role == role)
        .order_by(ModelAssignment.id.desc())
        .limit(1)
    ).first()
    return row.model_tag if row is not None else None


def history(*, session: Session, role: Role | None = None, limit: int = 100) -> list[Assignment]:
    """Newest first."""
    query = select(ModelAssignment).order_by(ModelAssignment.id.desc()).limit(limit)
    if role is not None:
        query = query.where(ModelAssignment.role == role)
    return [_assignment(row) for row in session.scalars(query)]
