"""The promotion gate: a candidate replaces the champion only if it is better.

It must beat the champion on the fixed holdout by ``min_improvement`` of the
chosen metric, and must not lose more than ``max_feedback_regression`` on the
feedback holdout (checked only when that holdout has ``min_feedback_rows``).
For domain adaptation, ``min_improvement`` may be negative (a tolerated loss on
the base holdout) together with ``min_feedback_improvement`` (a required gain
on the feedback holdout, which then must have enough rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def decide(
    candidate: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Mapping[str, Any]],
    config: GateConfig,
) -> GateDecision:
    """``candidate``/``champion`` map split name (holdout, feedback_holdout) to metrics."""
    metric = config.metric
    new, old = candidate["holdout"].get(metric), champion["holdout"].get(metric)
    if new is None or old is None:
        return GateDecision(False, "the holdout is empty: nothing to compare on")
    gain = new - old
    if gain < config.min_improvement:
        return GateDecision(
            False,
            f"holdout {metric} {new:.4f} vs champion {old:.4f} (+{gain:.4f}) "
            f"is below the required +{config.min_improvement:.4f}",
        )
    feedback_new = candidate.get("feedback_holdout", {})
    feedback_old = champion.get("feedback_holdout", {})
    rows = int(feedback_new.get("n", 0))
    if config.min_feedback_improvement is not None:
        if rows < config.min_feedback_rows:
            return GateDecision(
                False,
                f"a feedback-holdout gain is required but it has {rows} rows "
                f"(< {config.min_feedback_rows})",
            )
        change = feedback_new[metric] - feedback_old[metric]
        if change < config.min_feedback_improvement:
            return GateDecision(
                False,
                f"feedback holdout {metric} {change:+.4f} is below the required "
                f"+{config.min_feedback_improvement:.4f}",
            )
    if rows >= config.min_feedback_rows:
        change = feedback_new[metric] - feedback_old[metric]
        if change < -config.max_feedback_regression:
            return GateDecision(
                False,
                f"feedback holdout {metric} regresses {change:+.4f} "
                f"({feedback_new[metric]:.4f} vs {feedback_old[metric]:.4f})",
            )
        feedback_note = f"; feedback holdout {metric} {change:+.4f} on {rows} rows"
    else:
        feedback_note = (
            f"; feedback holdout too small to check ({rows} < {config.min_feedback_rows})"
        )
    return GateDecision(
        True, f"holdout {metric} {new:.4f} vs champion {old:.4f} (+{gain:.4f}){feedback_note}"
    )
