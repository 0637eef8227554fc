"""Aggregates over the store that feed the monitoring gauges."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from storage.models import Feedback, Prediction, TrainingRun
from storage.store import as_utc


@dataclass(frozen=True)
class VersionAgreement:
    model_version: str
    template_version: str
    rows: int
    agreeing: int

    @property
    def accuracy(self) -> float:
        return self.agreeing / self.rows if self.rows else 0.0


def feedback_agreement(*, session: Session, since: datetime) -> list[VersionAgreement]:
    """Feedback since ``since`` per (model, template) version of the judged prediction."""
    query = (
        select(
            Prediction.model_version,
            Prediction.template_version,
            func.count(Feedback.id),
            func.sum(case((Feedback.agrees, 1), else_=0)),
        )
        .join(Prediction, Feedback.prediction_id == Prediction.id)
        .where(Feedback.created_at >= since)
        .group_by(Prediction.model_version, Prediction.template_version)
    )
    return [
        VersionAgreement(model, template, int(rows), int(agreeing or 0))
        for model, template, rows, agreeing in session.execute(query)
    ]


def feedback_agreement_by_language(
    *, session: Session, since: datetime
) -> list[tuple[str | None, int, int]]:
    """(language of the judged prediction, feedback rows, agreeing rows) since ``since``;
    None for predictions logged before languages were recorded."""
    query = (
        select(
            Prediction.language,
            func.count(Feedback.id),
            func.sum(case((Feedback.agrees, 1), else_=0)),
        )
        .join(Prediction, Feedback.prediction_id == Prediction.id)
        .where(Feedback.created_at >= since)
        .group_by(Prediction.language)
    )
    return [
        (language, int(rows), int(agreeing or 0))
        for language, rows, agreeing in session.execute(query)
    ]


@dataclass
class TrainingStats:
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_duration_s: float | None = None
    last_finished_at: datetime | None = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    last_promoted: bool | None = None


def training_stats(*, session: Session) -> TrainingStats:
    stats = TrainingStats()
    for status, decision, count in session.execute(
        select(TrainingRun.status, TrainingRun.decision, func.count()).group_by(
            TrainingRun.status, TrainingRun.decision
        )
    ):
        stats.runs[(status, decision or "none")] = int(count)
    finished = session.scalars(
        select(TrainingRun)
        .where(TrainingRun.finished_at.is_not(None))
        .order_by(TrainingRun.finished_at.desc())
        .limit(1)
    ).first()
    if finished is not None and finished.finished_at is not None:
        stats.last_finished_at = as_utc(finished.finished_at)
        stats.last_duration_s = (
            as_utc(finished.finished_at) - as_utc(finished.started_at)
        ).total_seconds()
    succeeded = session.scalars(
        select(TrainingRun)
        .where(TrainingRun.status == "succeeded")
        .order_by(TrainingRun.finished_at.desc())
        .limit(1)
    ).first()
    if succeeded is not None:
        stats.last_metrics = dict(succeeded.metrics or {})
        stats.last_promoted = succeeded.decision == "promoted"
    return stats


@dataclass(frozen=True)
class ArmCounts:
    """One (template version, model version) arm's predictions in a window, and the
    latest judgement of each of them that has feedback."""

    template_version: str
    model_version: str
    predictions: int
    judged: int
    agreeing: int


def arm_counts(
    *, session: Session, since: datetime, until: datetime | None = None
) -> list[ArmCounts]:
    """Per arm, predictions made in ``[since, until)`` and their feedback (the latest
    piece per prediction: a prediction is one trial however often it was judged)."""
    window = [Prediction.created_at >= since]
    if until is not None:
        window.append(Prediction.created_at < until)
    made = session.execute(
        select(Prediction.template_version, Prediction.model_version, func.count())
        .where(*window)
        .group_by(Prediction.template_version, Prediction.model_version)
    ).all()
    latest = (
        select(func.max(Feedback.id).label("id"))
        .join(Prediction, Feedback.prediction_id == Prediction.id)
        .where(*window)
        .group_by(Feedback.prediction_id)
        .subquery()
    )
    judged = {
        (template, model): (int(rows), int(agreeing or 0))
        for template, model, rows, agreeing in session.execute(
            select(
                Prediction.template_version,
                Prediction.model_version,
                func.count(),
                func.sum(case((Feedback.agrees, 1), else_=0)),
            )
            .select_from(Feedback)
            .join(latest, Feedback.id == latest.c.id)
            .join(Prediction, Feedback.prediction_id == Prediction.id)
            .group_by(Prediction.template_version, Prediction.model_version)
        )
    }
    return [
        ArmCounts(template, model, int(count), *judged.get((template, model), (0, 0)))
        for template, model, count in made
    ]


def _unjudged(
    since: datetime, model_version: str | None, language: str | None
) -> Select[Prediction]:
    judged = select(Feedback.id).where(Feedback.prediction_id == Prediction.id).exists()
    query = select(Prediction).where(
        Prediction.created_at >= since, Prediction.text.is_not(None), ~judged
    )
    if model_version is not None:
        query = query.where(Prediction.model_version == model_version)
    if language is not None:
        query = query.where(Prediction.language == language)
    return query


def random_unjudged(
    *,
    session: Session,
    since: datetime,
    limit: int,
    model_version: str | None = None,
    language: str | None = None,
) -> list[Prediction]:
    """A random sample of the predictions ``least_confident_unjudged`` draws from."""
    query = _unjudged(since, model_version, language).order_by(func.random()).limit(limit)
    return list(session.scalars(query))


def least_confident_unjudged(
    *,
    session: Session,
    since: datetime,
    limit: int,
    model_version: str | None = None,
    language: str | None = None,
) -> list[Prediction]:
    """Predictions since ``since`` with a stored text and no feedback yet, least
    confident first (the review queue's candidates)."""
    query = _unjudged(since, model_version, language)
    return list(session.scalars(query.order_by(Prediction.confidence, Prediction.id).limit(limit)))
