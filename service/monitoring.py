"""Refreshes the database-derived gauges (feedback accuracy, training runs)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from feedback.statistics import wilson_interval
from model.language import UNDETERMINED, metric_language
from service.metrics import ApiMetrics
from storage import stats
from storage.store import utcnow

logger = logging.getLogger(__name__)

EVALUATION_METRICS = ("accuracy", "macro_f1", "ece")
# The key of a run's metrics that holds its traffic guard (``training.pipeline``).
TRAFFIC_GUARD = "traffic_guard"


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
        metrics.feedback_window.labels(*labels).set(arm.judged)
        interval = wilson_interval(arm.agreeing, arm.judged)
        bounds = (("estimate", arm.accuracy), ("low", interval.low), ("high", interval.high))
        for bound, value in bounds:
            metrics.experiment_agreement.labels(arm.template_version, arm.model_version, bound).set(
                value
            )
    totals: dict[str, list[int]] = {}
    for language, judged, agreeing in by_language:
        bucket = totals.setdefault(metric_language(language or UNDETERMINED), [0, 0])
        bucket[0] += judged
        bucket[1] += agreeing
    for language, (judged, agreeing) in totals.items():
        metrics.feedback_accuracy_by_language.labels(language).set(agreeing / judged)
    for (status, decision), count in training.runs.items():
        metrics.training_runs.labels(status, decision).set(count)
    if training.last_duration_s is not None and training.last_finished_at is not None:
        metrics.training_last_duration.set(training.last_duration_s)
        metrics.training_last_finished.set(training.last_finished_at.timestamp())
    if training.last_promoted is not None:
        metrics.training_last_promoted.set(1 if training.last_promoted else 0)
    set_training_figures(metrics, training.last_metrics)


def set_training_figures(metrics: ApiMetrics, run_metrics: Mapping[str, Any]) -> None:
    """The newest successful run's figures (``training_runs.metrics``): per split and
    model its metrics, each class's recall and each language's figures; the traffic
    guard's shares per language. Languages outside ``METRIC_LANGUAGES`` are left out
    (bounded labels)."""
    languages: dict[tuple[str, str, str, str], float] = {}
    traffic: dict[tuple[str, str], float] = {}
    for split, by_model in run_metrics.items():
        if split == TRAFFIC_GUARD:
            for code, values in (by_model or {}).get("languages", {}).items():
                if metric_language(code) == code:
                    traffic[(code, "changed")] = values["changed_share"]
                    traffic[(code, "corrected")] = values["corrected_share"]
            continue
        for model, values in by_model.items():
            if not isinstance(values, dict):
                continue
            for name in EVALUATION_METRICS:
                if values.get(name) is not None:
                    metrics.training_last_metric.labels(split, model, name).set(values[name])
            for label, figures in values.get("per_class", {}).items():
                metrics.training_last_recall.labels(split, model, label).set(figures["recall"])
            for code, figures in values.get("per_language", {}).items():
                if metric_language(code) == code:
                    for name in ("accuracy", "macro_f1"):
                        languages[(split, model, code, name)] = figures[name]
    metrics.set_training_languages(languages, traffic)
