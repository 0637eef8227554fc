"""Which prompt template version is the default and which traffic split runs, as an
append-only history: each decision (an experiment started or concluded, or a decision
reverted) appends a row, and the newest row is what serves. Every replica follows it
(``service.http.routing``), and a command from any shell acts on it: the database,
not a process's environment, says what runs.

A row's ``evidence`` holds ``kind`` (``started``, ``concluded``, ``reverted``),
``split`` (the experiment's arms, ``[[template version, model, weight], ...]``, or None:
no experiment) and ``concluded`` (whether that split now sends all traffic to the
winning template version's arms). A row recorded before splits were stored has no
``split``: the server's ``SENTILOOP_TRAFFIC_SPLIT`` (the seed) is its split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.settings import CHAMPION, TrafficArm
from storage.models import TemplateDecision
from storage.store import as_utc, utcnow


class DecisionConflict(Exception):
    """Another decision was recorded since the one this decision was made on."""


@dataclass(frozen=True)
class Experiment:
    """The traffic split a decision leaves in place."""

    arms: tuple[TrafficArm, ...]
    concluded: bool

    def describe(self) -> str:
        """``v1=90,v2/challenger=10`` (``experiments start --split`` reads this)."""
        return ",".join(
            arm.template_version
            + ("" if arm.model == CHAMPION else f"/{arm.model}")
            + f"={arm.weight:g}"
            for arm in self.arms
        )


def fingerprint(arms: Sequence[TrafficArm]) -> list[list[Any]]:
    """Arms as a decision stores them, in their order (sticky routing depends on it)."""
    return [[arm.template_version, arm.model, arm.weight] for arm in arms]


def same_split(a: Sequence[TrafficArm], b: Sequence[TrafficArm]) -> bool:
    return sorted(fingerprint(a)) == sorted(fingerprint(b))


@dataclass(frozen=True)
class Decision:
    id: int
    created_at: datetime
    template_version: str
    previous_version: str | None
    actor: str
    reason: str
    evidence: dict[str, Any]
    follows_id: int = 0  # the decision it was made on (0: the first)

    @property
    def recorded_split(self) -> bool:
        """False for a row from before splits were stored (the seed is its split)."""
        return "split" in self.evidence

    @property
    def experiment(self) -> Experiment | None:
        """The split this decision leaves running (None: none, or not recorded)."""
        arms = self.evidence.get("split")
        if not arms:
            return None
        concluded = self.evidence.get("concluded", self.evidence.get("kind") == "concluded")
        return Experiment(
            tuple(TrafficArm(template_version=t, model=m, weight=w) for t, m, w in arms),
            bool(concluded),
        )


def _decision(row: TemplateDecision) -> Decision:
    return Decision(
        id=row.id,
        created_at=as_utc(row.created_at),
        template_version=row.template_version,
        previous_version=row.previous_version,
        actor=row.actor,
        reason=row.reason,
        evidence=dict(row.evidence or {}),
        follows_id=row.follows_id,
    )


def get(*, session: Session, decision_id: int) -> Decision | None:
    row = session.get(TemplateDecision, decision_id) if decision_id else None
    return _decision(row) if row is not None else None


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
    follows: Decision | None,
    template_version: str,
    previous_version: str | None,
    actor: str,
    reason: str,
    evidence: dict[str, Any],
) -> Decision:
    """Record a decision made on ``follows`` (the latest decision the caller read; None
    when there was none); the caller commits. ``DecisionConflict`` when another
    decision was recorded on it meanwhile (a unique constraint decides, so of two
    concurrent decisions exactly one is recorded)."""
    row = TemplateDecision(
        created_at=utcnow(),
        template_version=template_version,
        previous_version=previous_version,
        actor=actor,
        reason=reason,
        evidence=evidence,
        follows_id=follows.id if follows is not None else 0,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as error:
        session.rollback()
        newer = latest(session=session)
        made = f" (decision {newer.id} by {newer.actor})" if newer is not None else ""
        raise DecisionConflict(
            f"another decision was recorded at the same time{made}; nothing was "
            "recorded: see `sentiloop experiments history`"
        ) from error
    return _decision(row)


def seed(
    *, session: Session, arms: Sequence[TrafficArm], default_version: str, actor: str
) -> Decision | None:
    """Record ``SENTILOOP_TRAFFIC_SPLIT`` as a started experiment the first time a server
    runs with it: a split no decision ever recorded. Once recorded, the database says
    what runs (a later `experiments start`, `conclude` or `revert` is not undone by a
    restart with the same variable); a changed variable is a new experiment. The
    decision recorded, or None; the caller commits."""
    for row in session.scalars(select(TemplateDecision.evidence)):
        stored = (row or {}).get("split")
        if stored and sorted(map(list, stored)) == sorted(fingerprint(arms)):
            return None
    current = latest(session=session)
    default = current.template_version if current is not None else default_version
    return decide(
        session=session,
        follows=current,
        template_version=default,
        previous_version=default,
        actor=actor,
        reason="SENTILOOP_TRAFFIC_SPLIT set when the server started",
        evidence={"kind": "started", "split": fingerprint(arms), "concluded": False},
    )


def history(*, session: Session, limit: int = 100) -> list[Decision]:
    """Newest first."""
    rows = session.scalars(
        select(TemplateDecision).order_by(TemplateDecision.id.desc()).limit(limit)
    )
    return [_decision(row) for row in rows]
