"""The promotion gate: a candidate replaces the champion only if it is better
where it matters, by more than chance, and forgets nothing it was not asked to.

* The primary holdout is the feedback holdout (the operator's own traffic) once
  it has ``min_feedback_rows`` rows; before that, the base holdout.
* On the primary holdout candidate and champion are compared on the same rows
  with a one-sided paired test of the gate's own ``metric``, so that "promoted on
  macro-F1" means better on macro-F1 by more than chance: for macro-F1 (the
  default) a paired permutation test of the macro-F1 difference (each row's two
  answers swapped at random, ``PERMUTATIONS`` times, seeded; every assignment when
  there are fewer); for accuracy the exact McNemar test (of the rows where exactly
  one of them is right, the candidate must win enough that chance does not
  explain it). A test of accuracy alone promoted a candidate that answered the
  majority class more often: accuracy +9 points while macro-F1 did not move
  (issue 20).
* Guards, each of which keeps the champion, so that the gate sees forgetting with
  nothing but feedback:

  - the base holdout, when there is one and the feedback holdout decides: at most
    ``base_tolerance`` of ``metric`` lost, and at most as much accuracy on the rows
    of each language with ``min_language_rows`` rows;
  - each language of the feedback holdout with ``min_language_rows`` rows: at most
    ``base_tolerance`` of ``metric`` lost there (an overall gain must not hide a
    language that got worse);
  - recent traffic outside the feedback (``TrafficComparison``, measured by
    ``training.traffic_guard``): in each language with ``min_language_rows`` recent
    answers, the share of answers the candidate changes may exceed the share of
    answers the corrections asked to change in that language by at most
    ``flip_tolerance``. A language nobody corrected justifies no change; a
    candidate that rewrites a fifth of its French answers after English
    corrections has forgotten something, even where nobody labelled French;
  - without a base holdout, the general guard set shipped with the model (a few
    hundred hand-written texts in six languages, ``model.shipped.GENERAL_GUARD``):
    overall and in each language, ``metric`` may fall by at most the larger of
    ``base_tolerance`` and ``GUARD_STANDARD_ERRORS`` standard errors of the paired
    difference (seeded bootstrap). On 30-60 rows a language's figure moves by several
    points by chance, so a 2-point limit would refuse faithful candidates; two
    standard errors refuse a loss like the 13-31 points a one-domain retraining cost
    (issue 20) when most of the changed answers got worse, while a candidate whose
    changes are chance falls below that bound about 2% of the time per language.

The decision's reason says all of this in plain words, with both metrics and the
recall of each class of candidate and champion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from model.labels import LABELS
from training.config import GateConfig

SPLIT_NAMES = {
    "holdout": "base holdout",
    "feedback_holdout": "feedback holdout",
    "general_guard": "general guard set",
}
METRIC_NAMES = {"macro_f1": "macro-F1", "accuracy": "accuracy"}
# Resamples of the permutation test and its seed: the same rows always get the same
# decision. 9,999 resamples put the Monte Carlo error of p near 0.05 at about 0.002.
PERMUTATIONS = 9999
PERMUTATION_SEED = 13
# The general guard's noise allowance: this many bootstrap standard errors of the
# paired difference, from this many resamples (seeded with PERMUTATION_SEED).
GUARD_STANDARD_ERRORS = 2.0
BOOTSTRAP_RESAMPLES = 2000


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


@dataclass(frozen=True)
class LanguageTraffic:
    """One language of recent traffic outside the feedback."""

    language: str
    rows: int  # recent answers both models scored
    changed: int  # of them, answered differently by the candidate
    judged: int  # predictions in this language with feedback
    corrections: int  # of them, whose latest feedback asks to change the answer

    @property
    def changed_share(self) -> float:
        return self.changed / self.rows if self.rows else 0.0

    def corrected_share(self, min_rows: int) -> float:
        """The share of answers the corrections asked to change, over at least
        ``min_rows`` judged answers: a few corrections justify few changes."""
        return self.corrections / max(self.judged, min_rows)


@dataclass(frozen=True)
class TrafficComparison:
    """Candidate and champion on recent unlabelled traffic, per language; without
    ``languages``, ``unavailable`` says why there is no traffic guard."""

    languages: tuple[LanguageTraffic, ...] = ()
    window_days: float = 0.0
    unavailable: str | None = None
    excluded: dict[str, int] = field(default_factory=dict)  # texts left out, by reason

    def to_dict(self, config: GateConfig) -> dict[str, Any]:
        return {
            "window_days": self.window_days,
            "unavailable": self.unavailable,
            "excluded": dict(self.excluded),
            "languages": {
                item.language: asdict(item)
                | {
                    "changed_share": item.changed_share,
                    "corrected_share": item.corrected_share(config.min_language_rows),
                }
                for item in self.languages
            },
        }


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


def _macro_f1(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Macro-F1 along the last axis of ``predicted`` (class indices; ``truth`` of the
    same shape or one row for all), as ``training.evaluate`` computes it: a class's F1
    is 2 TP / (predicted + true), 0 for a class neither predicted nor true."""
    scores = []
    for label in range(classes):
        is_true = truth == label
        guessed = predicted == label
        hits = (guessed & is_true).sum(axis=-1)
        denominator = guessed.sum(axis=-1) + is_true.sum(axis=-1)
        scores.append(np.where(denominator > 0, 2 * hits / np.maximum(denominator, 1), 0.0))
    return np.asarray(np.mean(scores, axis=0))


def macro_f1(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    index = {label: i for i, label in enumerate(labels)}
    return float(
        _macro_f1(
            np.array([index[t] for t in truth]),
            np.array([index[p] for p in predicted]),
            len(labels),
        )
    )


def macro_f1_permutation_greater(
    truth: Sequence[str],
    candidate: Sequence[str],
    champion: Sequence[str],
    labels: Sequence[str],
    *,
    resamples: int = PERMUTATIONS,
    seed: int = PERMUTATION_SEED,
) -> float:
    """One-sided p-value of "the candidate's macro-F1 is higher" on paired rows: the
    share of random swaps of each row's two answers whose macro-F1 difference is at
    least the observed one (scipy's paired permutation test; exact below
    ``resamples`` assignments)."""
    from scipy.stats import permutation_test

    if not len(truth) == len(candidate) == len(champion):
        raise ValueError(
            f"{len(truth)} true labels, {len(candidate)} candidate and "
            f"{len(champion)} champion answers"
        )
    index = {label: i for i, label in enumerate(labels)}
    true = np.array([index[label] for label in truth])
    new = np.array([index[label] for label in candidate])
    old = np.array([index[label] for label in champion])
    if np.array_equal(new, old):
        return 1.0

    def difference(first: np.ndarray, second: np.ndarray, axis: int = -1) -> np.ndarray:
        return _macro_f1(true, first, len(labels)) - _macro_f1(true, second, len(labels))

    result = permutation_test(
        (new, old),
        difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="greater",
        batch=1000,
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def _rows(metrics: Mapping[str, Any], split: str) -> tuple[list[str], list[str]]:
    """The true labels and answers per row (``training.evaluate``'s ``truth`` and
    ``predicted``)."""
    if "truth" not in metrics or "predicted" not in metrics:
        raise ValueError(
            f"the {SPLIT_NAMES.get(split, split)} metrics have no per-row truth and "
            "predicted labels: a paired test of macro-F1 needs them (training.evaluate)"
        )
    return list(metrics["truth"]), list(metrics["predicted"])


def _labels(metrics: Mapping[str, Any]) -> list[str]:
    return list(metrics.get("labels") or LABELS)


def _recalls(metrics: Mapping[str, Any]) -> dict[str, float]:
    per_class = metrics.get("per_class")
    if per_class:
        return {label: float(values["recall"]) for label, values in per_class.items()}
    if "truth" not in metrics or "predicted" not in metrics:
        return {}
    recalls = {}
    for label in _labels(metrics):
        rows = [
            p for t, p in zip(metrics["truth"], metrics["predicted"], strict=True) if t == label
        ]
        if rows:
            recalls[label] = sum(1 for p in rows if p == label) / len(rows)
    return recalls


def _points(value: float) -> str:
    return f"{100 * value:+.1f} points"


def _figures(new: Mapping[str, Any], old: Mapping[str, Any]) -> str:
    """Both metrics and each class's recall, candidate vs champion."""
    text = (
        f"macro-F1 {new['macro_f1']:.4f} vs {old['macro_f1']:.4f} "
        f"({_points(new['macro_f1'] - old['macro_f1'])}), accuracy {new['accuracy']:.4f} "
        f"vs {old['accuracy']:.4f} ({_points(new['accuracy'] - old['accuracy'])})"
    )
    new_recall, old_recall = _recalls(new), _recalls(old)
    if new_recall:
        text += "; recall " + ", ".join(
            f"{label} {value:.2f} vs {old_recall.get(label, 0.0):.2f}"
            for label, value in new_recall.items()
        )
    return text


def _primary_test(
    new: Mapping[str, Any], old: Mapping[str, Any], split: str, metric: str
) -> tuple[float, str]:
    """The paired test of ``metric`` on the primary split: (p, its description)."""
    if metric == "accuracy":
        test = paired_comparison(new["correct"], old["correct"])
        return test.p_value, (
            f"Of the {test.candidate_only + test.champion_only} rows where only one is "
            f"right, the candidate wins {test.candidate_only}: exact McNemar p = "
            f"{test.p_value:.4g}"
        )
    truth, candidate = _rows(new, split)
    _, champion = _rows(old, split)
    changed = sum(1 for a, b in zip(candidate, champion, strict=True) if a != b)
    p_value = macro_f1_permutation_greater(truth, candidate, champion, _labels(new))
    return p_value, (
        f"The candidate answers {changed} of its {len(truth)} rows differently; a paired "
        f"permutation test of the macro-F1 difference ({PERMUTATIONS} resamples, seed "
        f"{PERMUTATION_SEED}) gives p = {p_value:.4g}"
    )


def language_losses(
    candidate: Mapping[str, Any],
    champion: Mapping[str, Any],
    config: GateConfig,
    metric: str = "accuracy",
) -> list[str]:
    """Per language of the rows (``languages``, one code per row) with at least
    ``min_language_rows`` rows: where the candidate's ``metric`` falls by more than
    the tolerance, described."""
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
        if metric == "macro_f1":
            labels = _labels(candidate)
            truth = [candidate["truth"][i] for i in indices]
            new = macro_f1(truth, [candidate["predicted"][i] for i in indices], labels)
            old = macro_f1(truth, [champion["predicted"][i] for i in indices], labels)
        else:
            new = sum(candidate["correct"][i] for i in indices) / len(indices)
            old = sum(champion["correct"][i] for i in indices) / len(indices)
        if new - old < -config.base_tolerance:
            losses.append(
                f"{language} ({len(indices)} rows) {METRIC_NAMES[metric]} "
                f"{_points(new - old)} ({new:.4f} vs {old:.4f})"
            )
    return losses


def paired_loss_bound(
    truth: Sequence[str],
    candidate: Sequence[str],
    champion: Sequence[str],
    labels: Sequence[str],
    metric: str,
) -> tuple[float, float]:
    """The candidate's ``metric`` minus the champion's on paired rows, and the
    bootstrap standard error of that difference (rows resampled with replacement,
    ``BOOTSTRAP_RESAMPLES`` times, seeded: the same rows always get the same bound)."""
    index = {label: i for i, label in enumerate(labels)}
    true = np.array([index[label] for label in truth])
    new = np.array([index[label] for label in candidate])
    old = np.array([index[label] for label in champion])
    rows = np.random.default_rng(PERMUTATION_SEED).integers(
        0, len(true), size=(BOOTSTRAP_RESAMPLES, len(true))
    )

    def score(truth_rows: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        if metric == "macro_f1":
            return _macro_f1(truth_rows, predicted, len(labels))
        return np.asarray((truth_rows == predicted).mean(axis=-1))

    difference = float(score(true, new) - score(true, old))
    resampled = score(true[rows], new[rows]) - score(true[rows], old[rows])
    return difference, float(np.std(resampled, ddof=1))


def general_guard_losses(
    candidate: Mapping[str, Any], champion: Mapping[str, Any], config: GateConfig
) -> tuple[list[str], str]:
    """On the general guard set, overall and per language (``languages``, one code
    per row): where the candidate's ``metric`` falls by more than the larger of
    ``base_tolerance`` and ``GUARD_STANDARD_ERRORS`` standard errors of the paired
    difference (described), and a description of the whole comparison."""
    metric, labels = config.metric, _labels(candidate)
    truth, new = _rows(candidate, "general_guard")
    _, old = _rows(champion, "general_guard")
    groups: dict[str, list[int]] = {"all": list(range(len(truth)))}
    for position, language in enumerate(candidate.get("languages") or []):
        if language != "und":
            groups.setdefault(language, []).append(position)
    losses, figures = [], []
    for group, indices in groups.items():
        difference, error = paired_loss_bound(
            [truth[i] for i in indices],
            [new[i] for i in indices],
            [old[i] for i in indices],
            labels,
            metric,
        )
        allowed = max(config.base_tolerance, GUARD_STANDARD_ERRORS * error)
        where = "overall" if group == "all" else group
        figures.append(f"{where} ({len(indices)}) {_points(difference)}")
        if difference < -allowed:
            losses.append(
                f"on the general guard set {where} ({len(indices)} rows) "
                f"{METRIC_NAMES[metric]} {_points(difference)}, more than the allowed "
                f"{100 * allowed:.1f} points (the larger of the tolerated "
                f"{100 * config.base_tolerance:.1f} and {GUARD_STANDARD_ERRORS:g} standard "
                f"errors of the paired difference)"
            )
    summary = (
        f"On the general guard set shipped with the model the candidate's "
        f"{METRIC_NAMES[metric]} changes by {', '.join(figures)}."
    )
    return losses, summary


def per_language(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Rows, accuracy and macro-F1 of each language of a split (for reports)."""
    languages = metrics.get("languages")
    if not languages or "truth" not in metrics:
        return {}
    rows: dict[str, list[int]] = {}
    for index, language in enumerate(languages):
        rows.setdefault(language, []).append(index)
    labels = _labels(metrics)
    figures = {}
    for language, indices in sorted(rows.items()):
        truth = [metrics["truth"][i] for i in indices]
        predicted = [metrics["predicted"][i] for i in indices]
        figures[language] = {
            "n": len(indices),
            "accuracy": sum(1 for t, p in zip(truth, predicted, strict=True) if t == p)
            / len(indices),
            "macro_f1": macro_f1(truth, predicted, labels),
        }
    return figures


def traffic_changes(traffic: TrafficComparison, config: GateConfig) -> tuple[list[str], str]:
    """The languages of recent traffic whose answers change by more than the
    corrections justify (described), and a description of the whole comparison."""
    if traffic.unavailable or not traffic.languages:
        why = traffic.unavailable or "no recent traffic outside the feedback"
        return [], f"No traffic guard: {why}."
    tolerance = config.flip_tolerance
    problems, compared, skipped = [], [], []
    for item in sorted(traffic.languages, key=lambda entry: -entry.rows):
        corrected = item.corrected_share(config.min_language_rows)
        corrections = (
            f"corrections asked to change {100 * corrected:.1f}%: {item.corrections} of "
            f"{item.judged} judged answers"
        )
        if item.language == "und" or item.rows < config.min_language_rows:
            skipped.append(f"{item.language} ({item.rows})")
            continue
        compared.append(
            f"{item.language} {100 * item.changed_share:.1f}% of {item.rows} ({corrections})"
        )
        excess = item.changed_share - corrected
        if excess > tolerance:
            problems.append(
                f"on recent traffic outside the feedback the candidate changes "
                f"{100 * item.changed_share:.1f}% of the {item.rows} answers in "
                f"{item.language} ({corrections}), {100 * excess:.1f} points more than the "
                f"corrections asked, beyond the tolerated {100 * tolerance:.1f} points"
            )
    summary = (
        f"On recent traffic outside the feedback (last {traffic.window_days:g} days) the "
        f"candidate changes the answers in {'; '.join(compared) or 'no language with enough rows'}"
    )
    if skipped:
        summary += (
            f"; not judged (fewer than {config.min_language_rows} answers): {', '.join(skipped)}"
        )
    return problems, summary + f"; tolerated: {100 * tolerance:.1f} points beyond the corrections."


def decide(
    candidate: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Mapping[str, Any]],
    config: GateConfig,
    traffic: TrafficComparison | None = None,
) -> GateDecision:
    """``candidate``/``champion`` map split name (holdout, feedback_holdout,
    general_guard) to
    ``training.evaluate`` metrics with their per-row ``correct``, ``truth`` and
    ``predicted`` (and ``languages``, one code per row, where known): the same rows
    in the same order for both. ``traffic``: the two on recent traffic (None: not
    measured)."""
    metric = config.metric
    feedback_rows = int(candidate.get("feedback_holdout", {}).get("n", 0))
    primary = "feedback_holdout" if feedback_rows >= config.min_feedback_rows else "holdout"
    new, old = candidate.get(primary, {}), champion.get(primary, {})
    if not new.get("n"):
        if not feedback_rows:
            return GateDecision(False, "both holdouts are empty: nothing to compare on")
        return GateDecision(
            False,
            f"the feedback holdout has {feedback_rows} rows, fewer than the "
            f"{config.min_feedback_rows} it takes to judge a candidate on it, and there is "
            "no base holdout (--base-data or --holdout): not judged. More labelled feedback "
            "(each run holds out part of it) or base data lets the next run be judged.",
        )
    p_value, test = _primary_test(new, old, primary, metric)
    name = SPLIT_NAMES[primary]
    why_primary = (
        f"it has {feedback_rows} rows (>= {config.min_feedback_rows})"
        if primary == "feedback_holdout"
        else f"the feedback holdout has {feedback_rows} rows (< {config.min_feedback_rows})"
    )
    finding = (
        f"On the {name} ({why_primary}) the candidate is right on {sum(new['correct'])} "
        f"of {new['n']} rows, the champion on {sum(old['correct'])}: {_figures(new, old)}. "
        f"{test}"
    )
    tolerated = f"more than the tolerated {100 * config.base_tolerance:.1f} points"
    problems: list[str] = []
    notes: list[str] = []
    base_new, base_old = candidate.get("holdout", {}), champion.get("holdout", {})
    if primary == "feedback_holdout" and base_new.get("n"):
        change = base_new[metric] - base_old[metric]
        guard_text = (
            f"on the base holdout ({base_new['n']} rows) {metric} changes by {_points(change)} "
            f"({base_new[metric]:.4f} vs {base_old[metric]:.4f})"
        )
        losses = language_losses(base_new, base_old, config)
        if change < -config.base_tolerance:
            problems.append(f"{guard_text}, {tolerated}")
        if losses:
            problems.append(f"on the base holdout's rows in {'; '.join(losses)}: {tolerated}")
        if change >= -config.base_tolerance and not losses:
            within = f", within the tolerated {100 * config.base_tolerance:.1f} points"
            guard_text = f"{guard_text[0].upper()}{guard_text[1:]}"
            notes.append(
                f"{guard_text}{within if change < 0 else ''}; no language of it loses more."
            )
    guard_new, guard_old = candidate.get("general_guard", {}), champion.get("general_guard", {})
    if guard_new.get("n"):
        losses, summary = general_guard_losses(guard_new, guard_old, config)
        problems.extend(losses)
        if not losses:
            notes.append(f"{summary} No language loses more than its allowance.")
    if primary == "feedback_holdout":
        losses = language_losses(new, old, config, metric)
        if losses:
            problems.append(f"on the feedback holdout's rows in {'; '.join(losses)}: {tolerated}")
        elif new.get("languages"):
            notes.append(
                f"No language of the feedback holdout with {config.min_language_rows} rows "
                f"or more loses more than {100 * config.base_tolerance:.1f} points of "
                f"{METRIC_NAMES[metric]}."
            )
    if traffic is not None:
        changes, summary = traffic_changes(traffic, config)
        problems.extend(changes)
        notes.append(summary)
    guards = "".join(f" {note}" for note in notes)
    if p_value > config.significance:
        also = f" Also: {'; '.join(problems)}." if problems else ""
        return GateDecision(
            False,
            f"kept the champion. {finding}, above the significance level "
            f"{config.significance:g}: not a clear improvement on "
            f"{METRIC_NAMES[metric]}.{also}{guards}",
            primary,
            p_value,
        )
    if problems:
        return GateDecision(
            False,
            f"kept the champion. {finding} <= {config.significance:g}, but: "
            f"{'; '.join(problems)}.{guards}",
            primary,
            p_value,
        )
    return GateDecision(
        True, f"promoted. {finding} <= {config.significance:g}.{guards}", primary, p_value
    )
