from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from training import AssemblyConfig
from training.dataset import assemble
from training.examples import Example

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fb(text: str | None, label: str | None, minutes: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "text": text,
        "effective_label": label,
        "feedback_created_at": (T0 + timedelta(minutes=minutes)).isoformat(),
        **extra,
    }


def base(*pairs: tuple[str, str]) -> list[Example]:
    return [Example(text=t, label=label) for t, label in pairs]  # type: ignore[arg-type]


NO_SPLITS = AssemblyConfig(holdout_fraction=0, feedback_holdout_fraction=0, validation_fraction=0)


def everything(dataset: Any) -> list[Example]:
    return dataset.train + dataset.validation + dataset.holdout + dataset.feedback_holdout


def test_feedback_rules_corrections_confirmations_and_excluded_verdicts() -> None:
    rows = [
        fb("wrong one", "negative"),  # a correction (effective label = corrected)
        fb("right one", "positive"),  # verdict=correct (effective label = predicted)
        fb("unknown", None),  # verdict=incorrect without a label
        fb(None, "neutral"),  # text not stored
    ]
    dataset = assemble([], rows, NO_SPLITS)
    assert {(e.text, e.label) for e in dataset.train} == {
        ("wrong one", "negative"),
        ("right one", "positive"),
    }
    assert dataset.report.dropped == {
        "feedback_incorrect_without_label": 1,
        "feedback_text_not_stored": 1,
    }
    assert all(e.source == "feedback" and e.weight == 2.0 for e in dataset.train)


def test_feedback_weight_is_configurable() -> None:
    config = AssemblyConfig(
        holdout_fraction=0, feedback_holdout_fraction=0, validation_fraction=0, feedback_weight=5
    )
    assert assemble([], [fb("x", "neutral")], config).train[0].weight == 5


def test_dedup_by_normalized_text_feedback_overrides_base() -> None:
    dataset = assemble(
        base(("Great  Service", "neutral"), ("great service", "negative"), ("other", "positive")),
        [fb("GREAT service ", "positive")],
        NO_SPLITS,
    )
    labels = {e.key: (e.label, e.source) for e in dataset.train}
    assert labels == {"great service": ("positive", "feedback"), "other": ("positive", "base")}
    assert dataset.report.dropped == {"base_overridden_by_feedback": 2}


def test_duplicate_base_rows_keep_the_first() -> None:
    dataset = assemble(base(("a", "neutral"), ("A", "positive")), [], NO_SPLITS)
    assert [(e.text, e.label) for e in dataset.train] == [("a", "neutral")]
    assert dataset.report.dropped == {"base_duplicate": 1}


@pytest.mark.parametrize(
    ("policy", "expected", "dropped"),
    [
        ("latest", "negative", {"feedback_superseded": 2}),
        ("majority", "positive", {"feedback_superseded": 2}),
        ("drop", None, {"feedback_conflict_dropped": 3}),
    ],
)
def test_conflicting_feedback_policies(
    policy: str, expected: str | None, dropped: dict[str, int]
) -> None:
    rows = [fb("same", "positive", 0), fb("same", "positive", 1), fb("same", "negative", 2)]
    config = AssemblyConfig(
        holdout_fraction=0, feedback_holdout_fraction=0, validation_fraction=0,
        conflict_policy=policy,  # type: ignore[arg-type]
    )  # fmt: skip
    dataset = assemble([], rows, config)
    assert [e.label for e in dataset.train] == ([expected] if expected else [])
    assert dataset.report.dropped == dropped


def test_latest_wins_regardless_of_row_order() -> None:
    rows = [fb("same", "negative", 5), fb("same", "positive", 1)]
    assert assemble([], rows, NO_SPLITS).train[0].label == "negative"


def test_splits_are_deterministic_disjoint_and_stable_as_data_grows() -> None:
    examples = base(*[(f"text {n}", "neutral") for n in range(2000)])
    feedback_rows = [fb(f"feedback {n}", "positive", n) for n in range(500)]
    config = AssemblyConfig()
    first = assemble(examples, feedback_rows, config)
    again = assemble(examples, feedback_rows, config)
    assert first.data_sha256 == again.data_sha256
    keys = [
        {e.key for e in part}
        for part in (first.train, first.validation, first.holdout, first.feedback_holdout)
    ]
    assert sum(map(len, keys)) == len(set().union(*keys)) == 2500
    assert 150 < len(first.holdout) < 250 and 60 < len(first.feedback_holdout) < 140
    grown = assemble(
        examples + base(*[(f"new {n}", "neutral") for n in range(500)]), feedback_rows, config
    )
    assert {e.key for e in first.holdout} <= {e.key for e in grown.holdout}
    assert {e.key for e in first.feedback_holdout} == {e.key for e in grown.feedback_holdout}
    assert grown.data_sha256 != first.data_sha256


def test_explicit_holdout_is_never_trained_on() -> None:
    holdout = base(("held out", "positive"), ("also held", "negative"))
    dataset = assemble(
        base(("held out", "positive"), ("train me", "neutral")),
        [fb("ALSO held", "negative")],
        AssemblyConfig(feedback_holdout_fraction=0, validation_fraction=0),
        holdout=holdout,
    )
    assert [e.text for e in dataset.train] == ["train me"]
    assert [e.text for e in dataset.holdout] == ["held out", "also held"]
    assert dataset.report.dropped == {"feedback_in_holdout": 1, "base_in_holdout": 1}


def test_max_base_examples_samples_and_counts() -> None:
    dataset = assemble(
        base(*[(f"t{n}", "neutral") for n in range(100)]), [], AssemblyConfig(max_base_examples=30)
    )
    assert len(everything(dataset)) == 30
    assert dataset.report.dropped["base_over_limit"] == 70


def test_invalid_config_is_explained() -> None:
    with pytest.raises(ValueError, match="holdout_fraction must be in"):
        AssemblyConfig(holdout_fraction=1.5)
    with pytest.raises(ValueError, match="conflict_policy"):
        AssemblyConfig(conflict_policy="vote")  # type: ignore[arg-type]
