"""The A/B statistics against statsmodels (the test oracle)."""

from __future__ import annotations

import pytest
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from feedback.statistics import (
    newcombe_interval,
    rows_per_arm,
    two_proportion_p_value,
    wilson_interval,
)

CASES = [(81, 100, 70, 100), (5, 12, 9, 11), (430, 500, 400, 500), (0, 20, 3, 25), (30, 30, 28, 31)]


@pytest.mark.parametrize(("a", "n", "b", "m"), CASES)
def test_wilson_interval_matches_statsmodels(a: int, n: int, b: int, m: int) -> None:
    low, high = proportion_confint(a, n, alpha=0.05, method="wilson")
    ours = wilson_interval(a, n)
    assert ours.low == pytest.approx(low, abs=1e-9)
    assert ours.high == pytest.approx(high, abs=1e-9)


@pytest.mark.parametrize(("a", "n", "b", "m"), CASES)
def test_newcombe_interval_matches_statsmodels(a: int, n: int, b: int, m: int) -> None:
    low, high = confint_proportions_2indep(a, n, b, m, method="newcomb", compare="diff")
    ours = newcombe_interval(a, n, b, m)
    assert ours.low == pytest.approx(low, abs=1e-9)
    assert ours.high == pytest.approx(high, abs=1e-9)


@pytest.mark.parametrize(("a", "n", "b", "m"), CASES[:4])
def test_p_value_matches_pooled_z_test(a: int, n: int, b: int, m: int) -> None:
    _, p_value = proportions_ztest([a, b], [n, m])
    assert two_proportion_p_value(a, n, b, m) == pytest.approx(p_value, rel=1e-9)


def test_p_value_is_one_when_nothing_can_be_told() -> None:
    assert two_proportion_p_value(30, 30, 28, 28) == 1.0
    assert two_proportion_p_value(0, 0, 5, 10) == 1.0


@pytest.mark.parametrize(
    ("base", "difference"), [(0.8, 0.03), (0.8, -0.03), (0.5, 0.1), (0.7, 0.05)]
)
def test_rows_per_arm_matches_normal_power(base: float, difference: float) -> None:
    effect = abs(proportion_effectsize(base + difference, base))
    expected = NormalIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8, ratio=1.0)
    # statsmodels counts the far tail too (a fraction of a row); ours rounds up.
    assert rows_per_arm(base, difference) in (int(expected), int(expected) + 1)


def test_wilson_interval_without_trials_is_uninformative() -> None:
    interval = wilson_interval(0, 0)
    assert (interval.low, interval.high) == (0.0, 1.0)
