from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training import GateConfig
from training.evaluate import evaluate, expected_calibration_error, plot_evaluation
from training.gate import decide


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


def split_metrics(holdout: float, feedback: float, n: int = 50) -> dict[str, dict[str, Any]]:
    return {
        "holdout": {"n": 1000, "macro_f1": holdout, "accuracy": holdout},
        "feedback_holdout": {"n": n, "macro_f1": feedback, "accuracy": feedback},
    }


def test_gate_promotes_a_clearly_better_candidate() -> None:
    decision = decide(split_metrics(0.80, 0.70), split_metrics(0.70, 0.70), GateConfig())
    assert decision.promote and "+0.1000" in decision.reason


def test_gate_refuses_a_gain_below_the_margin() -> None:
    decision = decide(
        split_metrics(0.703, 0.9), split_metrics(0.70, 0.5), GateConfig(min_improvement=0.005)
    )
    assert not decision.promote and "below the required" in decision.reason


def test_gate_refuses_a_feedback_regression() -> None:
    decision = decide(split_metrics(0.80, 0.60), split_metrics(0.70, 0.65), GateConfig())
    assert not decision.promote and "regresses" in decision.reason
    tolerant = GateConfig(max_feedback_regression=0.1)
    assert decide(split_metrics(0.80, 0.60), split_metrics(0.70, 0.65), tolerant).promote


def test_gate_skips_a_too_small_feedback_holdout() -> None:
    decision = decide(split_metrics(0.80, 0.0, n=3), split_metrics(0.70, 1.0, n=3), GateConfig())
    assert decision.promote and "too small" in decision.reason


def test_gate_does_not_promote_on_an_empty_holdout() -> None:
    empty = {"holdout": {"n": 0}, "feedback_holdout": {"n": 0}}
    assert not decide(empty, empty, GateConfig()).promote


def test_gate_can_require_a_feedback_gain_and_tolerate_a_base_loss() -> None:
    adapt = GateConfig(min_improvement=-0.02, min_feedback_improvement=0.05)
    assert decide(split_metrics(0.69, 0.80), split_metrics(0.70, 0.60), adapt).promote
    refused = decide(split_metrics(0.69, 0.62), split_metrics(0.70, 0.60), adapt)
    assert not refused.promote and "below the required +0.0500" in refused.reason
    too_few = decide(split_metrics(0.75, 0.9, n=5), split_metrics(0.70, 0.6, n=5), adapt)
    assert not too_few.promote and "5 rows" in too_few.reason
    assert not decide(split_metrics(0.67, 0.9), split_metrics(0.70, 0.6), adapt).promote
