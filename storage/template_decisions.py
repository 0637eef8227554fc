"""Which prompt template version is the default, as an append-only history: each
decision (an experiment concluded, or a decision reverted) appends a row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import TemplateDecision
from storage.store import as_utc, utcnow


@dataclass(frozen=True)
class Decision:
    id: int
    created_at: datetime
    template_version: str
    previous_version: str | None
    actor: str
    reason: str
    evidence: dict[str, Any]


def _decision(row: TemplateDecision) -> Decision:
    return Decision(
        id=row.id,
        created_at=as_utc(row.created_at),
        template_version=row.template_version,
        previous_version=row.previous_version,
        actor=row.actor,
        reason=row.reason,
        evidence=dict(row.evidence or {}),
    )


def latest(*, session: Session) -> Decision | None:
    row = session.scalars(
        select(TemplateDecision).order_by(TemplateDecision.id.desc()).limit(1)
    ).first()
    return _decision(row) if row is not None else None


def default_version(*, session: Session, fallback: str) -> str:
    """The default template version: the latest decision's, else ``fallback`` (the
    settings' ``default_template_version``)."""
    decision = latest(session=session)
    return decision.template_version if decision is not None else fallback


def decide(
    *,
    session: Session,
    template_version: str,
    previous_version: str | None,
    actor: str,
    reason: str,
    evidence: dict[str, Any],
) -> Decision:
    """Make ``template_version`` the default; the caller commits."""
    row = TemplateDecision(
        created_at=utcnow(),
        template_version=template_version,
        previous_version=previous_version,
        actor=actor,
        reason=reason,
        evidence=evidence,
    )
    session.add(row)
    session.flush()
    return _decision(row)


def history(*, session: Session, limit: int = 100) -> list[Decision]:
    """Newest first."""
    rows = session.scalars(
        select(TemplateDecision).order_by(TemplateDecision.id.desc()).limit(limit)
    )
    return [_decision(row) for row in rows]
