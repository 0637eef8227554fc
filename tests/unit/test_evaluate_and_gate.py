from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training import GateConfig
from training.evaluate import evaluate, expected_calibration_error, plot_evaluation
from training.gate import (
    LanguageTraffic,
    TrafficComparison,
    decide,
    macro_f1,
    macro_f1_permutation_greater,
    mcnemar_exact_greater,
)


def onehot(label: str, confidence: float = 1.0) -> dict[str, float]:
    rest = (1 - confidence) / 2
    return {
        name: confidence if name == label else rest for name in ("negative", "neutral", "positive")
    }


def test_metrics_match_a_hand_computed_example() -> None:
    truth = ["negative", "negative", "neutral", "positive"]
    scores = [onehot("negative"), onehot("neutral"), onehot("neutral"), onehot("positive")]
    metrics = evaluate(truth, scores)
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert metrics["per_class"]["negative"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert metrics["per_class"]["neutral"]["precision"] == 0.5
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_not() -> None:
    assert expected_calibration_error([1.0, 1.0], [True, True])[0] == 0.0
    ece, table = expected_calibration_error([0.95] * 10, [True] * 5 + [False] * 5)
    assert ece == pytest.approx(0.45)
    assert table[0]["count"] == 10


def test_binary_evaluation_ignores_neutral() -> None:
    scores = [{"negative": 0.2, "neutral": 0.7, "positive": 0.1}]
    metrics = evaluate(["negative"], scores, labels=("negative", "positive"))
    assert metrics["accuracy"] == 1.0 and metrics["labels"] == ["negative", "positive"]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    metrics = evaluate(["negative", "positive"], [onehot("negative", 0.8), onehot("neutral", 0.6)])
    path = tmp_path / "plot.png"
    plot_evaluation(metrics, "test", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


LABELS = ("negative", "neutral", "positive")


def split(correct: list[bool], f1: float | None = None) -> dict[str, Any]:
    """Metrics of rows whose true labels cycle through the classes, answered right
    where ``correct`` says (else the next class)."""
    accuracy = sum(correct) / len(correct) if correct else 0.0
    truth = [LABELS[i % 3] for i in range(len(correct))]
    return {
        "n": len(correct),
        "accuracy": accuracy,
        "macro_f1": accuracy if f1 is None else f1,
        "correct": correct,
        "truth": truth,
        "predicted": [
            t if ok else LABELS[(LABELS.index(t) + 1) % 3]
            for t, ok in zip(truth, correct, strict=True)
        ],
    }


def rows(both: int, only_first: int, only_second: int, neither: int) -> tuple[list[bool], ...]:
    """Two per-row correctness vectors with the given agreement counts."""
    first = [True] * both + [True] * only_first + [False] * only_second + [False] * neither
    second = [True] * both + [False] * only_first + [True] * only_second + [False] * neither
    return first, second


def models(
    base: tuple[list[bool], ...], feedback: tuple[list[bool], ...], base_f1: tuple[float, float]
) -> tuple[dict[str, Any], dict[str, Any]]:
    candidate = {"holdout": split(base[0], base_f1[0]), "feedback_holdout": split(feedback[0])}
    champion = {"holdout": split(base[1], base_f1[1]), "feedback_holdout": split(feedback[1])}
    return candidate, champion


def test_mcnemar_exact_matches_the_binomial_tail() -> None:
    # 10 of 12 discordant rows won: P(X >= 10), X ~ Bin(12, 1/2) = (66 + 12 + 1) / 4096.
    assert mcnemar_exact_greater(10, 2) == pytest.approx(79 / 4096)
    assert mcnemar_exact_greater(0, 0) == 1.0
    assert mcnemar_exact_greater(3, 3) > 0.5


def test_feedback_holdout_decides_once_large_enough_and_the_base_loss_is_tolerated() -> None:
    # The case: clearly better on the operator's traffic, 1.6 points lower on tweets.
    candidate, champion = models(
        rows(900, 20, 20, 60), rows(150, 40, 8, 52), base_f1=(0.7640, 0.7800)
    )
    decision = decide(candidate, champion, GateConfig())
    assert decision.promote and decision.primary == "feedback_holdout"
    assert "-1.6 points" in decision.reason and "within the tolerated 2.0 points" in decision.reason
    assert decision.p_value is not None and decision.p_value < 0.001


def test_base_guard_refuses_a_loss_beyond_the_tolerance() -> None:
    candidate, champion = models(rows(900, 20, 20, 60), rows(150, 40, 8, 52), base_f1=(0.74, 0.78))
    decision = decide(candidate, champion, GateConfig())
    assert not decision.promote and "more than the tolerated 2.0 points" in decision.reason
    assert decide(candidate, champion, GateConfig(base_tolerance=0.05)).promote


def test_a_gain_chance_explains_is_not_promoted() -> None:
    # 6 vs 4 discordant rows: p = 0.377.
    candidate, champion = models(rows(900, 20, 20, 60), rows(150, 6, 4, 90), base_f1=(0.8, 0.8))
    decision = decide(candidate, champion, GateConfig(metric="accuracy"))
    assert not decision.promote and "not a clear improvement" in decision.reason
    assert decision.p_value == pytest.approx(386 / 1024)  # P(X >= 6), X ~ Bin(10, 1/2)


def test_base_holdout_decides_while_feedback_is_scarce() -> None:
    candidate, champion = models(rows(800, 60, 10, 130), rows(5, 0, 3, 2), base_f1=(0.86, 0.81))
    decision = decide(candidate, champion, GateConfig(min_feedback_rows=50))
    assert decision.promote and decision.primary == "holdout"
    assert "has 10 rows (< 50)" in decision.reason


def test_gate_does_not_promote_on_empty_holdouts() -> None:
    empty = {"holdout": {"n": 0}, "feedback_holdout": {"n": 0}}
    assert not decide(empty, empty, GateConfig()).promote


def test_a_feedback_holdout_too_small_without_a_base_one_is_named_not_called_empty() -> None:
    """A new user's run held out 21 feedback rows and was told 'both holdouts are empty'."""
    candidate = {"holdout": {"n": 0}, "feedback_holdout": split([True] * 21)}
    champion = {"holdout": {"n": 0}, "feedback_holdout": split([False] * 21)}
    decision = decide(candidate, champion, GateConfig(min_feedback_rows=50))
    assert not decision.promote
    assert "has 21 rows, fewer than the 50" in decision.reason and "empty" not in decision.reason


def test_the_guard_refuses_a_loss_on_one_language_of_the_base_holdout() -> None:
    # Overall the base holdout barely moves, but the French rows lose 20 points.
    candidate, champion = models(rows(150, 30, 20, 0), rows(150, 40, 8, 52), base_f1=(0.80, 0.80))
    languages = ["en"] * 100 + ["fr"] * 100
    base_new = [True] * 100 + [True] * 60 + [False] * 40
    base_old = [True] * 100 + [True] * 80 + [False] * 20
    candidate["holdout"] = split(base_new, 0.80) | {"languages": languages}
    champion["holdout"] = split(base_old, 0.80) | {"languages": languages}
    decision = decide(candidate, champion, GateConfig(base_tolerance=0.25))
    assert decision.promote  # within a loose tolerance
    strict = decide(candidate, champion, GateConfig(base_tolerance=0.1))
    assert not strict.promote and "fr (100 rows) accuracy -20.0 points" in strict.reason
    few = decide(candidate, champion, GateConfig(base_tolerance=0.1, min_language_rows=101))
    assert few.promote  # too few French rows to judge


# Issue 20: a gate that sees forgetting with the defaults (no base data, no holdout file).


def answered(truth: list[str], answers: list[str]) -> dict[str, Any]:
    """``training.evaluate``'s metrics of ``answers`` (one-hot scores) against ``truth``."""
    return evaluate(truth, [onehot(answer) for answer in answers])


def majority_collapse() -> tuple[list[str], list[str], list[str]]:
    """The issue's case on a feedback holdout: the candidate answers the minority class
    (neutral) far less often. Accuracy rises 5.7 points, macro-F1 falls."""
    truth = ["negative"] * 120 + ["positive"] * 120 + ["neutral"] * 60
    champion = (["negative"] * 84 + ["neutral"] * 36 + ["positive"] * 84 + ["neutral"] * 36
                + ["neutral"] * 45 + ["negative"] * 15)  # fmt: skip
    candidate = (["negative"] * 110 + ["positive"] * 10 + ["positive"] * 110
                 + ["negative"] * 10 + ["neutral"] * 10 + ["positive"] * 50)  # fmt: skip
    return truth, candidate, champion


def feedback_only(
    truth: list[str], candidate: list[str], champion: list[str], languages: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both models' splits for a team with feedback only: an empty base holdout."""
    new, old = answered(truth, candidate), answered(truth, champion)
    if languages is not None:
        new["languages"] = old["languages"] = languages
    return {"holdout": {"n": 0}, "feedback_holdout": new}, {
        "holdout": {"n": 0},
        "feedback_holdout": old,
    }


def clear_gain() -> tuple[list[str], list[str], list[str]]:
    """A candidate clearly better on 300 feedback rows (90% vs 70% right)."""
    truth = [LABELS[i % 3] for i in range(300)]
    wrong = [LABELS[(i + 1) % 3] for i in range(300)]
    candidate = [truth[i] if i % 10 else wrong[i] for i in range(300)]
    champion = [truth[i] if i % 10 >= 3 else wrong[i] for i in range(300)]
    return truth, candidate, champion


def test_macro_f1_gate_does_not_promote_an_accuracy_gain_that_costs_macro_f1() -> None:
    truth, new, old = majority_collapse()
    candidate, champion = feedback_only(truth, new, old)
    gain = candidate["feedback_holdout"]["accuracy"] - champion["feedback_holdout"]["accuracy"]
    loss = candidate["feedback_holdout"]["macro_f1"] - champion["feedback_holdout"]["macro_f1"]
    assert gain > 0.05 and loss < 0
    by_accuracy = decide(candidate, champion, GateConfig(metric="accuracy"))
    assert by_accuracy.promote and "exact McNemar" in by_accuracy.reason  # what it did before
    decision = decide(candidate, champion, GateConfig())
    assert not decision.promote and "not a clear improvement on macro-F1" in decision.reason
    assert decision.p_value is not None and decision.p_value > 0.5
    # Both metrics and every class's recall, candidate vs champion, are in the reason.
    assert "macro-F1 0.6537 vs 0.6997 (-4.6 points)" in decision.reason
    assert "accuracy 0.7667 vs 0.7100 (+5.7 points)" in decision.reason
    assert "neutral 0.17 vs 0.75" in decision.reason


def test_the_permutation_test_matches_an_exhaustive_hand_count() -> None:
    """Oracle: every assignment of the discordant rows' answers enumerated by hand,
    each scored with ``training.evaluate`` (not the gate's own macro-F1)."""
    import itertools
    import random

    generator = random.Random(7)
    truth = [generator.choice(LABELS) for _ in range(60)]
    candidate = list(truth)
    champion = list(truth)
    discordant = generator.sample(range(60), 12)
    for n, i in enumerate(discordant):  # 9 rows won by the candidate, 3 by the champion
        wrong = LABELS[(LABELS.index(truth[i]) + 1 + n % 2) % 3]
        candidate[i], champion[i] = (truth[i], wrong) if n < 9 else (wrong, truth[i])

    def difference(first: list[str], second: list[str]) -> float:
        return float(answered(truth, first)["macro_f1"] - answered(truth, second)["macro_f1"])

    observed = difference(candidate, champion)
    at_least = 0
    for swaps in itertools.product((False, True), repeat=len(discordant)):
        first, second = list(candidate), list(champion)
        for i, swap in zip(discordant, swaps, strict=True):
            if swap:
                first[i], second[i] = second[i], first[i]
        at_least += difference(first, second) >= observed - 1e-12
    exact = at_least / 2 ** len(discordant)
    assert 0.01 < exact < 0.2
    # 2^60 assignments: scipy samples 9,999 of them; the Monte Carlo error is ~0.003.
    assert macro_f1_permutation_greater(truth, candidate, champion, LABELS) == pytest.approx(
        exact, abs=0.01
    )
    # On the 12 discordant rows alone (4,096 assignments) scipy enumerates every
    # assignment: the hand count exactly.
    rows = sorted(discordant)
    t, a, b = ([seq[i] for i in rows] for seq in (truth, candidate, champion))
    base = answered(t, a)["macro_f1"] - answered(t, b)["macro_f1"]
    count = 0
    for swaps in itertools.product((False, True), repeat=len(rows)):
        first = [y if swap else x for x, y, swap in zip(a, b, swaps, strict=True)]
        second = [x if swap else y for x, y, swap in zip(a, b, swaps, strict=True)]
        count += answered(t, first)["macro_f1"] - answered(t, second)["macro_f1"] >= base - 1e-12
    assert macro_f1_permutation_greater(t, a, b, LABELS) == pytest.approx(count / 4096)


def test_the_gates_macro_f1_is_training_evaluates() -> None:
    truth, new, old = majority_collapse()
    for answers in (new, old):
        assert macro_f1(truth, answers, LABELS) == pytest.approx(
            answered(truth, answers)["macro_f1"]
        )


def test_mcnemar_matches_statsmodels() -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    for wins, losses in ((10, 2), (30, 18), (7, 7)):
        two_sided = mcnemar([[50, wins], [losses, 40]], exact=True).pvalue
        if wins > losses:
            assert mcnemar_exact_greater(wins, losses) == pytest.approx(two_sided / 2)
        else:
            assert mcnemar_exact_greater(wins, losses) >= 0.5


def traffic(*languages: tuple[str, int, int, int, int]) -> TrafficComparison:
    return TrafficComparison(
        languages=tuple(LanguageTraffic(*values) for values in languages), window_days=30
    )


def test_a_candidate_built_to_forget_is_kept_naming_the_language_and_the_figure() -> None:
    """Better on the (English) feedback, but it rewrites 30% of its French answers on
    recent traffic where nobody corrected French."""
    truth, new, old = clear_gain()
    candidate, champion = feedback_only(truth, new, old)
    assert decide(candidate, champion, GateConfig()).promote  # the feedback alone: promoted
    forgetting = traffic(("en", 300, 60, 1280, 464), ("fr", 200, 60, 0, 0), ("it", 20, 10, 0, 0))
    decision = decide(candidate, champion, GateConfig(), forgetting)
    assert not decision.promote and decision.reason.startswith("kept the champion")
    assert "changes 30.0% of the 200 answers in fr" in decision.reason
    assert "30.0 points more than the corrections asked" in decision.reason
    # English changes fewer answers than its corrections asked; Italian has too few rows.
    assert "in en 20.0% of 300 (corrections asked to change 36.2%" in decision.reason
    assert "not judged (fewer than 50 answers): it (20)" in decision.reason
    # Within the tolerance (10 points beyond the corrections) it is promoted.
    steady = traffic(("en", 300, 60, 1280, 464), ("fr", 200, 19, 0, 0))
    assert decide(candidate, champion, GateConfig(), steady).promote
    assert decide(candidate, champion, GateConfig(flip_tolerance=0.35), forgetting).promote


def test_a_few_corrections_justify_few_changes() -> None:
    truth, new, old = clear_gain()
    candidate, champion = feedback_only(truth, new, old)
    # 8 of 10 French corrections: over at least 50 rows they justify 16% changed answers.
    few = traffic(("fr", 200, 60, 10, 8))
    decision = decide(candidate, champion, GateConfig(), few)
    assert not decision.promote and "corrections asked to change 16.0%" in decision.reason
    assert decide(candidate, champion, GateConfig(), traffic(("fr", 200, 60, 100, 80))).promote


def test_without_stored_texts_the_reason_says_there_is_no_traffic_guard() -> None:
    truth, new, old = clear_gain()
    candidate, champion = feedback_only(truth, new, old)
    off = TrafficComparison(unavailable="text storage is off (SENTILOOP_TEXT_STORAGE=none)")
    decision = decide(candidate, champion, GateConfig(), off)
    assert decision.promote
    assert "No traffic guard: text storage is off" in decision.reason


def test_a_language_of_the_feedback_holdout_that_loses_keeps_the_champion() -> None:
    """Overall clearly better, but the German rows of the feedback lose macro-F1."""
    truth, new, old = clear_gain()
    languages = ["en"] * 240 + ["de"] * 60
    german = range(240, 300)
    worse = [LABELS[(LABELS.index(truth[i]) + 1) % 3] for i in range(300)]
    new = [worse[i] if i in german and i % 4 == 0 else old[i] if i in german else new[i]
           for i in range(300)]  # fmt: skip
    candidate, champion = feedback_only(truth, new, old, languages)
    decision = decide(candidate, champion, GateConfig())
    assert not decision.promote
    german_new = macro_f1([truth[i] for i in german], [new[i] for i in german], LABELS)
    german_old = macro_f1([truth[i] for i in german], [old[i] for i in german], LABELS)
    points = f"{100 * (german_new - german_old):+.1f} points"
    assert german_new - german_old < -0.02
    assert f"feedback holdout's rows in de (60 rows) macro-F1 {points}" in decision.reason
    assert decide(candidate, champion, GateConfig(base_tolerance=0.5)).promote


def with_general_guard(
    candidate: dict[str, Any], champion: dict[str, Any], new: list[str], old: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The splits plus a general guard set of 60 English, 60 French and 30 Italian
    rows (true labels cycling), answered ``new`` by the candidate and ``old`` by the
    champion."""
    truth = [LABELS[i % 3] for i in range(150)]
    languages = ["en"] * 60 + ["fr"] * 60 + ["it"] * 30
    guard_new, guard_old = answered(truth, new), answered(truth, old)
    guard_new["languages"] = guard_old["languages"] = languages
    return candidate | {"general_guard": guard_new}, champion | {"general_guard": guard_old}


def guard_answers(wrong: set[int]) -> list[str]:
    """Right on the 150 general guard rows except ``wrong`` (the next class there)."""
    return [LABELS[(i + (i in wrong)) % 3] for i in range(150)]


def test_the_general_guard_keeps_a_candidate_that_forgets_one_language() -> None:
    """Better on the feedback, but on the shipped general guard set its French falls
    from 57 to 45 of 60 right: kept, the reason naming French and the loss; a faithful
    candidate that answers two French rows differently (a loss beyond the 2-point
    tolerance, within the noise of 60 rows) is promoted."""
    truth, new, old = clear_gain()
    champion_wrong = {3, 30, 64, 90, 121, 140}
    champion_answers = guard_answers(champion_wrong)
    forgetting = guard_answers(champion_wrong | set(range(60, 120, 5)))
    candidate, champion = with_general_guard(
        *feedback_only(truth, new, old), forgetting, champion_answers
    )
    decision = decide(candidate, champion, GateConfig())
    assert not decision.promote and decision.reason.startswith("kept the champion")
    french = range(60, 120)
    guard_truth = [LABELS[i % 3] for i in french]
    loss = macro_f1(guard_truth, [forgetting[i] for i in french], LABELS) - macro_f1(
        guard_truth, [champion_answers[i] for i in french], LABELS
    )
    assert loss < -0.15
    assert f"on the general guard set fr (60 rows) macro-F1 {100 * loss:+.1f} points" in (
        decision.reason
    )
    assert "general guard set en" not in decision.reason  # English did not lose

    faithful = guard_answers(champion_wrong | {70, 101})
    small = macro_f1(guard_truth, [faithful[i] for i in french], LABELS) - macro_f1(
        guard_truth, [champion_answers[i] for i in french], LABELS
    )
    assert -0.1 < small < -GateConfig().base_tolerance  # beyond the tolerance, within noise
    candidate, champion = with_general_guard(
        *feedback_only(truth, new, old), faithful, champion_answers
    )
    decision = decide(candidate, champion, GateConfig())
    assert decision.promote, decision.reason
    assert "On the general guard set shipped with the model" in decision.reason
