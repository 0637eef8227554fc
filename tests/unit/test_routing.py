from __future__ import annotations

import random
from collections import Counter

import pytest

from core.settings import CHAMPION, Settings, TrafficArm
from service.http.routing import Route, TrafficSplit


def split(*arms: tuple[str, str, float], seed: int = 0) -> TrafficSplit:
    return TrafficSplit(
        [TrafficArm(template_version=t, model=m, weight=w) for t, m, w in arms],
        salt="test",
        rng=random.Random(seed),
    )


def test_same_routing_key_always_gets_the_same_arm() -> None:
    ab = split(("v1", CHAMPION, 1), ("v2", CHAMPION, 1))
    for key in (f"customer-{n}" for n in range(200)):
        first = ab.choose(key)
        assert all(ab.choose(key) == first for _ in range(5))


def test_keys_are_spread_by_the_weights() -> None:
    ab = split(("v1", CHAMPION, 9), ("v2", CHAMPION, 1))
    counts = Counter(ab.choose(f"key-{n}").template_version for n in range(20_000))
    assert 0.87 < counts["v1"] / 20_000 < 0.93


def test_without_key_arms_are_drawn_at_random_with_the_weights() -> None:
    ab = split(("v1", CHAMPION, 1), ("v2", "zero-shot", 3))
    counts = Counter(ab.choose() for _ in range(20_000))
    assert 0.72 < counts[Route("v2", "zero-shot")] / 20_000 < 0.78


def test_explicit_template_version_picks_among_its_arms_only() -> None:
    ab = split(("v1", CHAMPION, 1), ("v2", "m:1", 1), ("v2", "m:2", 1))
    routes = {ab.choose(f"k{n}", template_version="v2") for n in range(500)}
    assert routes == {Route("v2", "m:1"), Route("v2", "m:2")}


def test_template_version_outside_the_split_goes_to_the_champion() -> None:
    ab = split(("v1", "m:1", 1))
    assert ab.choose("k", template_version="v7") == Route("v7", CHAMPION)


def test_changing_the_salt_reshuffles_assignments() -> None:
    arms = [
        TrafficArm(template_version="v1", weight=1),
        TrafficArm(template_version="v2", weight=1),
    ]
    a, b = TrafficSplit(arms, salt="a"), TrafficSplit(arms, salt="b")
    keys = [f"k{n}" for n in range(200)]
    assert [a.choose(k) for k in keys] != [b.choose(k) for k in keys]


def test_settings_default_split_is_all_traffic_to_default_template() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [(a.template_version, a.model, a.weight) for a in settings.traffic_split] == [
        ("v1", CHAMPION, 1.0)
    ]


def test_settings_reads_split_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SENTILOOP_TRAFFIC_SPLIT",
        '[{"template_version": "v1", "weight": 80}, {"template_version": "v2", "weight": 20}]',
    )
    assert [a.weight for a in Settings().traffic_split] == [80, 20]


def test_settings_rejects_duplicate_and_non_positive_arms() -> None:
    with pytest.raises(ValueError, match="twice"):
        Settings(traffic_split=[TrafficArm(template_version="v1", weight=1)] * 2)
    with pytest.raises(ValueError, match="greater than 0"):
        Settings(traffic_split=[{"template_version": "v1", "weight": 0}])  # type: ignore[list-item]
