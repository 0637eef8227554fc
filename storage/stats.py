"""Aggregates over the store that feed the monitoring gauges."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, case, func, select
from sqlalchemy.orm import Session, aliased

from storage.models import Feedback, Prediction, TrainingRun
from storage.store import as_utc


def latest_judgements(*where: ColumnElement[bool]) -> Subquery:
    """Feedback joined with its prediction, filtered by ``where``, with ``newest_first``
    (1: the latest piece of feedback on its prediction, the one that counts).

    Every agreement figure (the A/B report, ``sentiloop_feedback_accuracy``,
    ``sentiloop_experiment_agreement``, the by-language gauge) counts a prediction
    once, by its latest judgement: a ticket corrected twice is one trial, not two.
    "Latest" is ``created_at``, then the id: time-ordered ids made in the same
    millisecond do not sort by time, so the id only breaks exact ties.
    """
    newest_first = func.row_number().over(
        partition_by=Feedback.prediction_id,
        order_by=(Feedback.created_at.desc(), Feedback.id.desc()),
    )
    return (
        select(
            Prediction.model_version,
            Prediction.template_version,
            Prediction.language,
            Feedback.agrees,
            newest_first.label("newest_first"),
        )
        .join(Prediction, Feedback.prediction_id == Prediction.id)
        .where(*where)
        .subquery()
    )


@dataclass(frozen=True)
class VersionAgreement:
    model_version: str
    template_version: str
    judged: int  # predictions with feedback, each counted once
    agreeing: int

    @property
    def accuracy(self) -> float:
        return self.agreeing / self.judged if self.judged else 0.0


def feedback_agreement(*, session: Session, since: datetime) -> list[VersionAgreement]:
    """Per (model, template) version, the predictions judged since ``since`` and how
    many of them agree, by their latest judgement (which is the one since ``since``
    whenever any is)."""
    latest = latest_judgements(Feedback.created_at >= since)
    query = (
        select(
            latest.c.model_version,
            latest.c.template_version,
            func.count(),
            func.sum(case((latest.c.agrees, 1), else_=0)),
        )
        .where(latest.c.newest_first == 1)
        .group_by(latest.c.model_version, latest.c.template_version)
    )
    return [
        VersionAgreement(model, template, int(judged), int(agreeing or 0))
        for model, template, judged, agreeing in session.execute(query)
    ]


def feedback_agreement_by_language(
    *, session: Session, since: datetime
) -> list[tuple[str | None, int, int]]:
    """(language of the judged prediction, predictions judged, agreeing ones) since
    ``since``, counted as ``feedback_agreement`` counts; None for predictions logged
    before languages were recorded."""
    latest = latest_judgements(Feedback.created_at >= since)
    query = (
        select(
            latest.c.language,
            func.count(),
            func.sum(case((latest.c.agrees, 1), else_=0)),
        )
        .where(latest.c.newest_first == 1)
        .group_by(latest.c.language)
    )
    return [
        (language, int(judged), int(agreeing or 0))
        for language, judged, agreeing in session.execute(query)
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
    latest = latest_judgements(*window)
    judged = {
        (template, model): (int(rows), int(agreeing or 0))
        for template, model, rows, agreeing in session.execute(
            select(
                latest.c.template_version,
                latest.c.model_version,
                func.count(),
                func.sum(case((latest.c.agrees, 1), else_=0)),
            )
            .where(latest.c.newest_first == 1)
            .group_by(latest.c.template_version, latest.c.model_version)
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
    # A text already labelled under another prediction (the same ticket text scored
    # twice, a template) needs no second label.
    labelled = aliased(Prediction)
    labelled_texts = select(labelled.text_sha256).join(
        Feedback, Feedback.prediction_id == labelled.id
    )
    query = select(Prediction).where(
        Prediction.created_at >= since,
        Prediction.text.is_not(None),
        ~judged,
        Prediction.text_sha256.not_in(labelled_texts),
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
    """Predictions since ``since`` with a stored text and no feedback yet, on it or on
    another prediction of the same text; least confident first (the review queue's
    candidates)."""
    query = _unjudged(since, model_version, language)
    return list(session.scalars(query.order_by(Prediction.confidence, Prediction.id).limit(limit)))


def unjudged_texts_by_language(
    *, session: Session, since: datetime, until: datetime, per_language: int, languages: int
) -> dict[str, list[str]]:
    """The newest stored texts of predictions made in ``[since, until)`` without
    feedback, at most ``per_language`` of each of the ``languages`` most frequent
    detected languages (not undetermined): the recent traffic the promotion gate
    compares a candidate's answers with the champion's on (``training.traffic_guard``)."""
    judged = select(Feedback.id).where(Feedback.prediction_id == Prediction.id).exists()
    where = (
        Prediction.created_at >= since,
        Prediction.created_at < until,
        Prediction.text.is_not(None),
        Prediction.language.is_not(None),
        Prediction.language != "und",
        ~judged,
    )
    frequent = session.execute(
        select(Prediction.language, func.count())
        .where(*where)
        .group_by(Prediction.language)
        .order_by(func.count().desc(), Prediction.language)
        .limit(languages)
    ).all()
    texts: dict[str, list[str]] = {}
    for language, _ in frequent:
        query = (
            select(Prediction.text)
            .where(*where, Prediction.language == language)
            .order_by(Prediction.created_at.desc(), Prediction.id.desc())
            .limit(per_language)
        )
        texts[str(language)] = [text for text in session.scalars(query) if text]
    return texts
