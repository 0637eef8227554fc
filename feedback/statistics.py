"""Two-proportion statistics for A/B comparisons of agreement rates.

Wilson score interval for one rate, Newcombe's hybrid score interval (method 10)
for a difference, the pooled two-proportion z-test, and the rows per arm needed
to detect a difference (Cohen's h with the normal approximation). The same
figures as statsmodels' ``proportion_confint(method="wilson")``,
``confint_proportions_2indep(method="newcomb")``, ``proportions_ztest`` and
``NormalIndPower`` (the tests hold them to it); hand-written because the service
needs four formulas, not statsmodels and scipy on every serving machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()


def _z(confidence: float) -> float:
    return _NORMAL.inv_cdf(1 - (1 - confidence) / 2)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of ``successes / trials``; (0, 1) without trials."""
    if trials == 0:
        return Interval(0.0, 1.0)
    z = _z(confidence)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def newcombe_interval(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int, confidence: float = 0.95
) -> Interval:
    """Interval of the difference ``p_a - p_b`` from the two Wilson intervals
    (Newcombe 1998, method 10)."""
    p_a = successes_a / trials_a if trials_a else 0.0
    p_b = successes_b / trials_b if trials_b else 0.0
    a = wilson_interval(successes_a, trials_a, confidence)
    b = wilson_interval(successes_b, trials_b, confidence)
    difference = p_a - p_b
    low = difference - math.sqrt((p_a - a.low) ** 2 + (b.high - p_b) ** 2)
    high = difference + math.sqrt((a.high - p_a) ** 2 + (p_b - b.low) ** 2)
    return Interval(max(-1.0, low), min(1.0, high))


def two_proportion_p_value(
    successes_a: int, trials_a: int, successes_b: int, trials_b: int
) -> float:
    """Two-sided p-value of the pooled z-test that both rates are equal (1.0 when it
    cannot be told: an arm without rows, or every row alike)."""
    if trials_a == 0 or trials_b == 0:
        return 1.0
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    variance = pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b)
    if variance == 0:
        return 1.0
    z = (successes_a / trials_a - successes_b / trials_b) / math.sqrt(variance)
    return 2 * (1 - _NORMAL.cdf(abs(z)))


def rows_per_arm(
    base_rate: float, difference: float, *, significance: float = 0.05, power: float = 0.8
) -> int:
    """Rows each arm needs for a two-sided test at ``significance`` to detect
    ``base_rate`` against ``base_rate + difference`` with ``power`` (Cohen's h)."""
    other = min(max(base_rate + difference, 1e-6), 1 - 1e-6)
    base = min(max(base_rate, 1e-6), 1 - 1e-6)
    h = abs(2 * math.asin(math.sqrt(other)) - 2 * math.asin(math.sqrt(base)))
    if h == 0:
        raise ValueError("difference must not be zero")
    z_alpha = _NORMAL.inv_cdf(1 - significance / 2)
    z_beta = _NORMAL.inv_cdf(power)
    # Each arm's 2·asin(√p) has variance 1/n, so their difference 2/n.
    return math.ceil(2 * ((z_alpha + z_beta) / h) ** 2)
