"""Refreshes the database-derived gauges (feedback accuracy, training runs)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from feedback.statistics import wilson_interval
from model.language import UNDETERMINED, metric_language
from service.metrics import ApiMetrics
from storage import stats
from storage.store import utcnow

logger = logging.getLogger(__name__)

EVALUATION_METRICS = ("accuracy", "macro_f1", "ece")


def refresh_gauges(
    metrics: ApiMetrics, sessions: sessionmaker[Session], feedback_window: timedelta
) -> None:
    with sessions() as session:
        since = utcnow() - feedback_window
        agreement = stats.feedback_agreement(session=session, since=since)
        by_language = stats.feedback_agreement_by_language(session=session, since=since)
        training = stats.training_stats(session=session)
    for arm in agreement:  # per (model, template) version: an A/B arm
        labels = (arm.model_version, arm.template_version)
        metrics.feedback_accuracy.labels(*labels).set(arm.accuracy)
        metrics.feedback_window.labels(*labels).set(arm.rows)
        interval = wilson_interval(arm.agreeing, arm.rows)
        bounds = (("estimate", arm.accuracy), ("low", interval.low), ("high", interval.high))
        for bound, value in bounds:
            metrics.experiment_agreement.labels(arm.template_version, arm.model_version, bound).set(
                value
            )
    totals: dict[str, list[int]] = {}
    for language, rows, agreeing in by_language:
        bucket = totals.setdefault(metric_language(language or UNDETERMINED), [0, 0])
        bucket[0] += rows
        bucket[1] += agreeing
    for language, (rows, agreeing) in totals.items():
        metrics.feedback_accuracy_by_language.labels(language).set(agreeing / rows)
    for (status, decision), count in training.runs.items():
        metrics.training_runs.labels(status, decision).set(count)
    if training.last_duration_s is not None and training.last_finished_at is not None:
        metrics.training_last_duration.set(training.last_duration_s)
        metrics.training_last_finished.set(training.last_finished_at.timestamp())
    if training.last_promoted is not None:
        metrics.training_last_promoted.set(1 if training.last_promoted else 0)
    for split, by_model in training.last_metrics.items():
        for model, values in by_model.items():
            for name in EVALUATION_METRICS:
                if isinstance(values, dict) and values.get(name) is not None:
                    metrics.training_last_metric.labels(split, model, name).set(values[name])
