"""Periodic retraining: when enough new feedback arrived, or every interval.

The first condition met triggers a run. The database lock in the pipeline keeps
two schedulers (or a scheduler and a manual run) from training at once.
"""

from __future__ import annotations

import logging
import threading
import time

from storage import runs
from training.config import Schedule
from training.pipeline import RunOutcome, TrainingBusy, TrainingPipeline, TrainingPlan

logger = logging.getLogger(__name__)


def due(pipeline: TrainingPipeline, schedule: Schedule, last_run_at: float | None) -> str | None:
    """Why a run is due now ("feedback" or "interval"), or None."""
    with pipeline.sessions() as session:
        cutoff = runs.last_successful_cutoff(session=session)
        new_feedback = runs.count_feedback_since(session=session, since=cutoff)
    if new_feedback >= schedule.min_new_feedback:
        return "feedback"
    if last_run_at is not None and time.monotonic() - last_run_at >= schedule.interval_s:
        return "interval"
    return None


def run_schedule(
    pipeline: TrainingPipeline,
    plan: TrainingPlan,
    schedule: Schedule,
    stop: threading.Event,
    max_runs: int | None = None,
) -> list[RunOutcome]:
    """Check every ``poll_s`` until ``stop`` is set (or ``max_runs`` runs happened)."""
    outcomes: list[RunOutcome] = []
    started = time.monotonic()
    last_run_at: float | None = started
    while not stop.is_set():
        reason = due(pipeline, schedule, last_run_at)
        if reason is not None:
            try:
                outcome = pipeline.run(plan, trigger=f"schedule:{reason}")
            except TrainingBusy as exc:
                logger.info("scheduled run skipped: %s", exc)
            except Exception:
                logger.exception("scheduled training run failed")
                last_run_at = time.monotonic()
            else:
                outcomes.append(outcome)
                last_run_at = time.monotonic()
                if max_runs is not None and len(outcomes) >= max_runs:
                    break
        stop.wait(schedule.poll_s)
    return outcomes
