"""Periodic retraining: when enough new feedback arrived, or every interval.

The first condition met triggers a run. The database lock in the pipeline keeps
two schedulers (or a scheduler and a manual run) from training at once.

Two drivers share the rule (``due``): ``run_schedule`` keeps running and counts
the interval from its own last run (``sentiloop train --schedule``), and
``check_now`` checks once and counts it from the newest run recorded in the
database, because a process started by a CronJob remembers nothing of the
previous one (``sentiloop train --if-due``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from storage import runs, store
from training.config import Schedule
from training.pipeline import RunOutcome, TrainingBusy, TrainingPipeline, TrainingPlan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueCheck:
    """What the rule looked at, and what it decided."""

    reason: str | None  # "feedback", "interval", or None: not due
    new_feedback: int  # feedback rows since the newest successful run's cut-off
    since_last_run_s: float | None  # None: no run to count the interval from

    @property
    def trigger(self) -> str:
        """What the run it starts is recorded as (``models runs``)."""
        return f"schedule:{self.reason}"

    def describe(self, schedule: Schedule) -> str:
        last = (
            "no run recorded yet (the interval counts from the first run)"
            if self.since_last_run_s is None
            else f"last run {self.since_last_run_s / 3600:.1f} h ago "
            f"(interval {schedule.interval_s / 3600:g} h)"
        )
        return f"{self.new_feedback} new feedback rows (of {schedule.min_new_feedback}), {last}"


def check_due(
    pipeline: TrainingPipeline, schedule: Schedule, since_last_run_s: float | None
) -> DueCheck:
    """Due on ``min_new_feedback`` rows since the newest successful run's cut-off, or
    when ``interval_s`` passed since the last run (``since_last_run_s``; None: none)."""
    with pipeline.sessions() as session:
        cutoff = runs.last_successful_cutoff(session=session)
        new_feedback = runs.count_feedback_since(session=session, since=cutoff)
    reason = None
    if new_feedback >= schedule.min_new_feedback:
        reason = "feedback"
    elif since_last_run_s is not None and since_last_run_s >= schedule.interval_s:
        reason = "interval"
    return DueCheck(reason, new_feedback, since_last_run_s)


def due(pipeline: TrainingPipeline, schedule: Schedule, last_run_at: float | None) -> str | None:
    """Why a run is due now ("feedback" or "interval"), or None; ``last_run_at`` is a
    ``time.monotonic()`` reading."""
    since = None if last_run_at is None else time.monotonic() - last_run_at
    return check_due(pipeline, schedule, since).reason


def seconds_since_last_run(pipeline: TrainingPipeline) -> float | None:
    """Since the newest recorded run ended (started, while it has not), whatever its
    outcome: as ``run_schedule`` counts from its last run, failed ones included, so
    that a failing run is not retried at every check. None: no run recorded."""
    with pipeline.sessions() as session:
        newest = runs.list_runs(session=session, limit=1)
    if not newest:
        return None
    moment = store.as_utc(newest[0].finished_at or newest[0].started_at)
    return max(0.0, (store.utcnow() - moment).total_seconds())


def check_now(pipeline: TrainingPipeline, schedule: Schedule) -> DueCheck:
    """One check, the interval counted from the newest run recorded in the database.
    With no run recorded, only the feedback rule applies: a first run on the interval
    would train a new installation on no feedback at all, and fail at every tick of
    the CronJob."""
    return check_due(pipeline, schedule, seconds_since_last_run(pipeline))


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
