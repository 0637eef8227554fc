from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training import GateConfig
from training.evaluate import evaluate, expected_calibration_error, plot_evaluation
from training.gate import decide, mcnemar_exact_greater


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


def split(correct: list[bool], f1: float | None = None) -> dict[str, Any]:
    accuracy = sum(correct) / len(correct) if correct else 0.0
    return {
        "n": len(correct),
        "accuracy": accuracy,
        "macro_f1": accuracy if f1 is None else f1,
        "correct": correct,
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
    decision = decide(candidate, champion, GateConfig())
    assert not decision.promote and "not a clear improvement" in decision.reason
    assert decision.p_value == pytest.approx(mcnemar_exact_greater(6, 4))


def test_base_holdout_decides_while_feedback_is_scarce() -> None:
    candidate, champion = models(rows(800, 60, 10, 130), rows(5, 0, 3, 2), base_f1=(0.86, 0.81))
    decision = decide(candidate, champion, GateConfig(min_feedback_rows=50))
    assert decision.promote and decision.primary == "holdout"
    assert "has 10 rows (< 50)" in decision.reason


def test_gate_does_not_promote_on_empty_holdouts() -> None:
    empty = {"holdout": {"n": 0}, "feedback_holdout": {"n": 0}}
    assert not decide(empty, empty, GateConfig()).promote


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
