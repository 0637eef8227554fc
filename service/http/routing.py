"""A/B traffic split over (template version, model) arms.

Assignment is sticky per routing key: the same key always lands in the same
arm while the split is unchanged (a salted SHA-256 bucket). Without a key the
arm is drawn at random with the configured weights.

Which arms serve (``serving_arms``) is what the database's latest template decision
says (``storage.template_decisions``), so every replica and every shell agree: the
split it leaves running (``sentiloop experiments start``) as recorded; once concluded
(``sentiloop experiments conclude``), its arms of the winning template version take
all traffic; a reverted decision restores what ran before it. Without a split, the
default template version (the latest decision's, else the settings') with the
champion. ``SENTILOOP_TRAFFIC_SPLIT`` is a seed: it serves until the server records it
as a started experiment (``template_decisions.seed``), and a restart with the same
variable does not undo a later decision.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from core.buckets import stable_bucket
from core.settings import CHAMPION, TrafficArm
from storage.template_decisions import Decision


@dataclass(frozen=True)
class Route:
    template_version: str
    model: str


class TrafficSplit:
    def __init__(
        self, arms: Sequence[TrafficArm], *, salt: str, rng: random.Random | None = None
    ) -> None:
        if not arms:
            raise ValueError("a traffic split needs at least one arm")
        total = sum(arm.weight for arm in arms)
        self.arms = [Route(arm.template_version, arm.model) for arm in arms]
        self.shares = [arm.weight / total for arm in arms]
        self._cumulative: list[float] = []
        running = 0.0
        for share in self.shares:
            running += share
            self._cumulative.append(running)
        self._cumulative[-1] = 1.0
        self._salt = salt
        self._rng = rng or random.Random()

    @property
    def template_versions(self) -> list[str]:
        return sorted({arm.template_version for arm in self.arms})

    @property
    def models(self) -> list[str]:
        return sorted({arm.model for arm in self.arms})

    def _pick(self, point: float) -> Route:
        return self.arms[bisect.bisect_right(self._cumulative, point)]

    def choose(self, routing_key: str | None = None, template_version: str | None = None) -> Route:
        """The arm for a request; an explicit template version narrows the choice.

        When the request names a template version that no arm serves, the
        champion model serves it.
        """
        point = (
            stable_bucket(routing_key, self._salt)
            if routing_key is not None
            else self._rng.random()
        )
        if template_version is None:
            return self._pick(point)
        candidates = [
            (arm, share)
            for arm, share in zip(self.arms, self.shares, strict=True)
            if arm.template_version == template_version
        ]
        if not candidates:
            return Route(template_version, CHAMPION)
        total = sum(share for _, share in candidates)
        running = 0.0
        for arm, share in candidates:
            running += share / total
            if point < running:
                return arm
        return candidates[-1][0]


def serving_arms(
    seed: Sequence[TrafficArm] | None, default_template: str, decision: Decision | None
) -> list[TrafficArm]:
    """The arms to serve: see the module's docstring. ``seed`` is None when no split
    was set in the environment; ``default_template`` is the settings' default."""
    if decision is not None:
        default_template = decision.template_version
    if decision is None or not decision.recorded_split:
        arms, concluded = (list(seed) if seed else []), False
    else:
        experiment = decision.experiment
        arms = list(experiment.arms) if experiment is not None else []
        concluded = experiment is not None and experiment.concluded
    if not arms:
        return [TrafficArm(template_version=default_template, weight=1.0)]
    if not concluded:
        return arms
    winners = [arm for arm in arms if arm.template_version == default_template]
    return winners or [TrafficArm(template_version=default_template, weight=1.0)]
