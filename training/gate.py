"""The promotion gate: a candidate replaces the champion only if it is better
where it matters, by more than chance.

* The primary holdout is the feedback holdout (the operator's own traffic) once
  it has ``min_feedback_rows`` rows; before that, the base holdout.
* On the primary holdout candidate and champion are compared on the same rows
  with an exact one-sided McNemar test: of the rows where exactly one of them is
  right, the candidate must win enough that chance (p <= ``significance``) does
  not explain it.
* While the feedback holdout is primary, the base holdout is a guard: the
  candidate may lose at most ``base_tolerance`` of ``metric`` there, and at most
  ``base_tolerance`` of accuracy on the rows of each language with
  ``min_language_rows`` rows in it (a model that learns German from corrections
  must not quietly forget French).

The decision's reason says all of this in plain words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from training.config import GateConfig

SPLIT_NAMES = {"holdout": "base holdout", "feedback_holdout": "feedback holdout"}


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    primary: str | None = None  # the split judged with the paired test
    p_value: float | None = None


@dataclass(frozen=True)
class PairedComparison:
    rows: int
    candidate_correct: int
    champion_correct: int
    candidate_only: int  # rows only the candidate gets right
    champion_only: int  # rows only the champion gets right
    p_value: float  # one-sided: the candidate is better


def mcnemar_exact_greater(candidate_only: int, champion_only: int) -> float:
    """P(X >= candidate_only) for X ~ Binomial(candidate_only + champion_only, 1/2):
    the chance of the candidate winning at least this many discordant rows if
    both were equally good."""
    discordant = candidate_only + champion_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(candidate_only, discordant + 1))
    return min(1.0, tail / 2**discordant)


def paired_comparison(candidate: Sequence[bool], champion: Sequence[bool]) -> PairedComparison:
    if len(candidate) != len(champion):
        raise ValueError(f"{len(candidate)} candidate rows but {len(champion)} champion rows")
    candidate_only = sum(1 for new, old in zip(candidate, champion, strict=True) if new and not old)
    champion_only = sum(1 for new, old in zip(candidate, champion, strict=True) if old and not new)
    return PairedComparison(
        rows=len(candidate),
        candidate_correct=sum(candidate),
        champion_correct=sum(champion),
        candidate_only=candidate_only,
        champion_only=champion_only,
        p_value=mcnemar_exact_greater(candidate_only, champion_only),
    )


def language_losses(
    candidate: Mapping[str, Any], champion: Mapping[str, Any], config: GateConfig
) -> list[str]:
    """Per language of the rows (``languages``, one code per row) with at least
    ``min_language_rows`` rows: where the candidate's accuracy falls by more than the
    tolerance, described."""
    languages = candidate.get("languages")
    if not languages:
        return []
    rows: dict[str, list[int]] = {}
    for index, language in enumerate(languages):
        rows.setdefault(language, []).append(index)
    losses = []
    for language, indices in sorted(rows.items()):
        if language == "und" or len(indices) < config.min_language_rows:
            continue
        new = sum(candidate["correct"][i] for i in indices) / len(indices)
        old = sum(champion["correct"][i] for i in indices) / len(indices)
        if new - old < -config.base_tolerance:
            losses.append(
                f"{language} ({len(indices)} rows) accuracy {_points(new - old)} "
                f"({new:.4f} vs {old:.4f})"
            )
    return losses


def _points(value: float) -> str:
    return f"{100 * value:+.1f} points"


def decide(
    candidate: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Mapping[str, Any]],
    config: GateConfig,
) -> GateDecision:
    """``candidate``/``champion`` map split name (holdout, feedback_holdout) to metrics
    with ``correct``: one bool per row, the same rows in the same order for both."""
    metric = config.metric
    feedback_rows = int(candidate.get("feedback_holdout", {}).get("n", 0))
    primary = "feedback_holdout" if feedback_rows >= config.min_feedback_rows else "holdout"
    new, old = candidate.get(primary, {}), champion.get(primary, {})
    if not new.get("n"):
        return GateDecision(False, "both holdouts are empty: nothing to compare on")
    test = paired_comparison(new["correct"], old["correct"])
    name = SPLIT_NAMES[primary]
    why_primary = (
        f"it has {feedback_rows} rows (>= {config.min_feedback_rows})"
        if primary == "feedback_holdout"
        else f"the feedback holdout has {feedback_rows} rows (< {config.min_feedback_rows})"
    )
    finding = (
        f"On the {name} ({why_primary}) the candidate is right on {test.candidate_correct} "
        f"of {test.rows} rows, the champion on {test.champion_correct} "
        f"(accuracy {_points((test.candidate_correct - test.champion_correct) / test.rows)}; "
        f"{metric} {new[metric]:.4f} vs {old[metric]:.4f}). Of the "
        f"{test.candidate_only + test.champion_only} rows where only one is right, the "
        f"candidate wins {test.candidate_only}: "
        f"exact McNemar p = {test.p_value:.4g}"
    )
    if test.p_value > config.significance:
        return GateDecision(
            False,
            f"kept the champion. {finding}, above the significance level "
            f"{config.significance:g}: not a clear improvement.",
            primary,
            test.p_value,
        )
    guard = ""
    base_new, base_old = candidate.get("holdout", {}), champion.get("holdout", {})
    if primary == "feedback_holdout" and base_new.get("n"):
        change = base_new[metric] - base_old[metric]
        guard_text = (
            f"On the base holdout ({base_new['n']} rows) {metric} changes by {_points(change)} "
            f"({base_new[metric]:.4f} vs {base_old[metric]:.4f})"
        )
        if change < -config.base_tolerance:
            return GateDecision(
                False,
                f"kept the champion. {finding} <= {config.significance:g}, but: {guard_text}, "
                f"more than the tolerated {100 * config.base_tolerance:.1f} points.",
                primary,
                test.p_value,
            )
        losses = language_losses(base_new, base_old, config)
        if losses:
            return GateDecision(
                False,
                f"kept the champion. {finding} <= {config.significance:g}, but on the base "
                f"holdout's rows in {'; '.join(losses)}: more than the tolerated "
                f"{100 * config.base_tolerance:.1f} points.",
                primary,
                test.p_value,
            )
        within = (
            f", within the tolerated {100 * config.base_tolerance:.1f} points" if change < 0 else ""
        )
        guard = f" {guard_text}{within}; no language of it loses more."
    return GateDecision(
        True,
        f"promoted. {finding} <= {config.significance:g}.{guard}",
        primary,
        test.p_value,
    )
