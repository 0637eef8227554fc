"""The A/B experiments report: per arm of the traffic split (template version x model
version) over a window, agreement of feedback with a Wilson interval, the difference
against the control arm with Newcombe's interval and a two-sided z-test, and a
plain verdict; ``start`` records a split to run, ``conclude`` makes the winning template
version the default (and sends the split's traffic to it), ``revert`` undoes a decision.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from core.settings import CHAMPION, TrafficArm
from feedback.statistics import (
    newcombe_interval,
    rows_per_arm,
    two_proportion_p_value,
    wilson_interval,
)
from storage import template_decisions
from storage.stats import ArmCounts, arm_counts
from storage.template_decisions import Experiment


class ExperimentError(Exception):
    """An experiment request that cannot be answered (the HTTP boundary: 400/409)."""

    field: str | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ReportConfig:
    significance: float = 0.05
    power: float = 0.8
    # The smallest difference in agreement worth detecting, as a fraction (3 points).
    detectable_difference: float = 0.03
    # Below this many judged predictions in an arm, no verdict is drawn.
    min_rows: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.significance < 1:
            raise ValueError(f"significance must be in (0, 1), got {self.significance}")
        if not 0 < self.power < 1:
            raise ValueError(f"power must be in (0, 1), got {self.power}")
        if not 0 < self.detectable_difference < 1:
            raise ValueError("detectable_difference must be in (0, 1)")


@dataclass(frozen=True)
class Arm:
    template_version: str
    model_version: str
    predictions: int
    judged: int
    agreeing: int
    agreement: float | None
    interval: tuple[float, float] | None

    @property
    def name(self) -> str:
        return f"{self.template_version}/{self.model_version}"


@dataclass(frozen=True)
class Comparison:
    arm: str
    control: str
    difference: float | None
    interval: tuple[float, float] | None
    p_value: float | None
    significant: bool
    winner: str | None
    rows_needed_per_arm: int
    verdict: str


@dataclass
class ExperimentReport:
    since: datetime
    until: datetime | None
    default_template_version: str
    control: str | None
    arms: list[Arm] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    config: ReportConfig = field(default_factory=ReportConfig)

    @property
    def winner(self) -> Comparison | None:
        """The comparison whose arm significantly beats the control, best first."""
        beating = [c for c in self.comparisons if c.significant and c.winner == c.arm]
        return max(beating, key=lambda c: c.difference or 0.0, default=None)

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["since"] = self.since.isoformat()
        body["until"] = self.until.isoformat() if self.until else None
        for arm, described in zip(self.arms, body["arms"], strict=True):
            described["arm"] = arm.name
        return body


def _arm(counts: ArmCounts, confidence: float) -> Arm:
    interval = (
        wilson_interval(counts.agreeing, counts.judged, confidence) if counts.judged else None
    )
    return Arm(
        template_version=counts.template_version,
        model_version=counts.model_version,
        predictions=counts.predictions,
        judged=counts.judged,
        agreeing=counts.agreeing,
        agreement=counts.agreeing / counts.judged if counts.judged else None,
        interval=(interval.low, interval.high) if interval else None,
    )


def _points(fraction: float) -> str:
    return f"{100 * fraction:+.1f} points"


def compare(arm: Arm, control: Arm, config: ReportConfig) -> Comparison:
    """``arm`` against ``control``, with a verdict in words."""
    confidence = 1 - config.significance
    base = control.agreement if control.agreement is not None else 0.8
    delta = config.detectable_difference
    # Both directions, where there is room (a control right every time can only lose).
    needed = max(
        rows_per_arm(base, change, significance=config.significance, power=config.power)
        for change in (delta, -delta)
        if 0 < base + change < 1
    )
    fewest = min(arm.judged, control.judged)
    detectable = f"{100 * delta:.0f}-point difference"
    if arm.agreement is None or control.agreement is None or fewest < config.min_rows:
        more = max(needed - fewest, config.min_rows - fewest)
        return Comparison(
            arm.name,
            control.name,
            None,
            None,
            None,
            False,
            None,
            needed,
            f"not enough feedback yet: ~{more} more judged predictions per arm needed "
            f"for a {detectable}",
        )
    difference = arm.agreement - control.agreement
    interval = newcombe_interval(
        arm.agreeing, arm.judged, control.agreeing, control.judged, confidence
    )
    p_value = two_proportion_p_value(arm.agreeing, arm.judged, control.agreeing, control.judged)
    significant = p_value < config.significance
    winner: Arm | None = None
    if significant:
        winner, loser = (arm, control) if difference > 0 else (control, arm)
        verdict = (
            f"arm {winner.name} beats {loser.name} by {_points(abs(difference))}, p = {p_value:.3g}"
        )
    elif fewest < needed:
        verdict = (
            f"no significant difference yet ({_points(difference)}, p = {p_value:.2g}): "
            f"~{needed - fewest} more judged predictions per arm needed for a {detectable}"
        )
    else:
        verdict = (
            f"no difference detected: {_points(difference)} (95% interval "
            f"{_points(interval.low)} to {_points(interval.high)}), p = {p_value:.2g}"
        )
    return Comparison(
        arm.name,
        control.name,
        difference,
        (interval.low, interval.high),
        p_value,
        significant,
        winner.name if winner is not None else None,
        needed,
        verdict,
    )


def build_report(
    *,
    session: Session,
    since: datetime,
    until: datetime | None = None,
    default_template: str,
    control: str | None = None,
    config: ReportConfig | None = None,
) -> ExperimentReport:
    """The report over predictions made in ``[since, until)``. ``control``: an arm's
    name (``template/model``) or a template version; by default the arm of the
    default template version with the most predictions."""
    config = config or ReportConfig()
    arms = sorted(
        (
            _arm(c, 1 - config.significance)
            for c in arm_counts(session=session, since=since, until=until)
        ),
        key=lambda a: (-a.predictions, a.name),
    )
    report = ExperimentReport(since, until, default_template, None, arms, config=config)
    if not arms:
        return report
    if control is not None:
        chosen = [a for a in arms if control in (a.name, a.template_version)]
        if not chosen:
            names = ", ".join(a.name for a in arms)
            raise ExperimentError(
                f"control {control!r} is no arm with predictions in the window ({names})",
                field="control",
            )
    else:
        chosen = [a for a in arms if a.template_version == default_template] or arms
    control_arm = chosen[0]
    report.control = control_arm.name
    report.comparisons = [
        compare(arm, control_arm, config) for arm in arms if arm is not control_arm
    ]
    return report


def parse_split(text: str) -> list[TrafficArm]:
    """``v1=90,v2=10`` (``TEMPLATE[/MODEL]=WEIGHT``, the model ``champion`` unless
    named), or the JSON list that ``SENTILOOP_TRAFFIC_SPLIT`` takes."""
    try:
        if text.lstrip().startswith("["):
            raw = json.loads(text)
            arms = [TrafficArm.model_validate(arm) for arm in raw]
        else:
            arms = []
            for part in (p.strip() for p in text.split(",") if p.strip()):
                arm, equals, weight = part.rpartition("=")
                if not equals:
                    raise ValueError(f"{part!r} has no weight (TEMPLATE[/MODEL]=WEIGHT)")
                template, _, model = arm.partition("/")
                arms.append(
                    TrafficArm(template_version=template, model=model or CHAMPION,
                               weight=float(weight))
                )  # fmt: skip
    except (ValueError, ValidationError) as error:
        reason = error.errors()[0]["msg"] if isinstance(error, ValidationError) else error
        raise ExperimentError(
            f"cannot read the split {text!r}: {reason}; e.g. 'v1=90,v2=10' or "
            "'v1=90,v2/challenger=10'",
            field="split",
        ) from None
    keys = [(arm.template_version, arm.model) for arm in arms]
    if len(arms) < 2 or len(set(keys)) < len(keys):
        raise ExperimentError(
            f"a split needs two or more different arms, got {text!r}", field="split"
        )
    return arms


def _current(session: Session) -> tuple[template_decisions.Decision | None, Experiment | None]:
    """The latest decision and the experiment it leaves running. Refuses when the
    database does not say which split runs (a decision recorded before splits were;
    a server started with its SENTILOOP_TRAFFIC_SPLIT records it)."""
    latest = template_decisions.latest(session=session)
    if latest is not None and not latest.recorded_split:
        raise ExperimentError(
            f"the database does not record which split the server runs (decision "
            f"{latest.id} predates it): restart the server, or record it with "
            "`sentiloop experiments start --split ...`",
            field="split",
        )
    return latest, latest.experiment if latest is not None else None


def start(
    *,
    session: Session,
    arms: Sequence[TrafficArm],
    actor: str,
    reason: str,
    default_version: str,
) -> template_decisions.Decision:
    """Run ``arms`` as an experiment: recorded, and followed by every server within its
    poll interval (no restart). ``default_version``: the settings' default, when no
    decision made one. The caller commits."""
    latest = template_decisions.latest(session=session)
    running = latest.experiment if latest is not None else None
    if (
        running is not None
        and not running.concluded
        and template_decisions.same_split(running.arms, arms)
    ):
        raise ExperimentError(f"the split {running.describe()} runs already", field="split")
    default = latest.template_version if latest is not None else default_version
    return _decide(
        session,
        latest,
        template_version=default,
        previous_version=default,
        actor=actor,
        reason=reason,
        evidence={
            "kind": "started",
            "split": template_decisions.fingerprint(arms),
            "concluded": False,
        },
    )


def conclude(
    *,
    session: Session,
    report: ExperimentReport,
    actor: str,
    reason: str | None = None,
    winner_template: str | None = None,
) -> template_decisions.Decision:
    """Make the winning arm's template version the default (or ``winner_template``,
    the operator's call) and, when an experiment runs, send all its traffic to the
    winner's arms; the caller commits. Acts on the split the database says runs, or
    refuses saying why: no significant winner unless the operator names one, a winner
    that is no arm of the running split, a split concluded already, or a decision
    recorded since the report was made."""
    latest, running = _current(session)
    default = latest.template_version if latest is not None else None
    if default is not None and default != report.default_template_version:
        raise ExperimentError(
            f"the default template changed to {default!r} (decision {latest and latest.id}) "
            "since the report was made; run it again",
            field=None,
        )
    if running is not None and running.concluded:
        raise ExperimentError(
            f"the split {running.describe()} was concluded already (decision "
            f"{latest and latest.id}: {report.default_template_version} serves); start a "
            "new one with `sentiloop experiments start --split ...`",
            field="winner",
        )
    if winner_template is None:
        best = report.winner
        if best is None:
            verdicts = "; ".join(c.verdict for c in report.comparisons) or "no arms compared"
            raise ExperimentError(
                f"no arm beats the control significantly ({verdicts}); name a template "
                "version with --winner to decide anyway",
                field="winner",
            )
        winner_template = report.arm(best.arm).template_version
        reason = reason or best.verdict
    elif reason is None:
        raise ExperimentError("say why with --reason when naming the winner", field="reason")
    if running is not None and winner_template not in {
        arm.template_version for arm in running.arms
    }:
        raise ExperimentError(
            f"template version {winner_template!r} is no arm of the running split "
            f"{running.describe()}",
            field="winner",
        )
    if running is None and winner_template == report.default_template_version:
        raise ExperimentError(
            f"template version {winner_template!r} is already the default", field="winner"
        )
    return _decide(
        session,
        latest,
        template_version=winner_template,
        previous_version=report.default_template_version,
        actor=actor,
        reason=reason or "",
        evidence={
            "kind": "concluded",
            "split": template_decisions.fingerprint(running.arms) if running else None,
            "concluded": running is not None,
            "report": report.to_dict(),
        },
    )


def revert(*, session: Session, actor: str, reason: str) -> template_decisions.Decision:
    """Undo the latest decision: the default template version and the split (running,
    concluded or none) are what they were before it."""
    last = template_decisions.latest(session=session)
    if last is None or last.previous_version is None:
        raise ExperimentError("no template decision to revert", field=None)
    before = template_decisions.get(session=session, decision_id=last.follows_id)
    evidence: dict[str, Any] = {"kind": "reverted", "decision_id": last.id}
    if before is None or before.recorded_split:  # else the seed's split runs again
        running = before.experiment if before is not None else None
        evidence["split"] = template_decisions.fingerprint(running.arms) if running else None
        evidence["concluded"] = running is not None and running.concluded
    return _decide(
        session,
        last,
        template_version=last.previous_version,
        previous_version=last.template_version,
        actor=actor,
        reason=reason,
        evidence=evidence,
    )


def _decide(
    session: Session, follows: template_decisions.Decision | None, **decision: Any
) -> template_decisions.Decision:
    try:
        return template_decisions.decide(session=session, follows=follows, **decision)
    except template_decisions.DecisionConflict as error:
        raise ExperimentError(str(error), field=None) from None
