"""Experiments as the database records them, on a real SQLite file and a real
PostgreSQL: the split that runs is the latest decision's, whatever a process's
environment says; start, conclude and revert move it; concurrent decisions from the
same state record one."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from core.settings import TrafficArm
from feedback import experiments
from service.http.routing import serving_arms
from storage import template_decisions
from tests.integration.test_feedback_loop import seed_arm

SPLIT = [TrafficArm(template_version="v1", weight=90), TrafficArm(template_version="v2", weight=10)]


def report(sessions: sessionmaker[Session]) -> experiments.ExperimentReport:
    with sessions() as session:
        default = template_decisions.default_version(session=session, fallback="v1")
        return experiments.build_report(
            session=session, since=datetime.now(UTC) - timedelta(days=1), default_template=default
        )


def latest(sessions: sessionmaker[Session]) -> template_decisions.Decision | None:
    with sessions() as session:
        return template_decisions.latest(session=session)


def versions(arms: list[TrafficArm]) -> list[str]:
    return [arm.template_version for arm in arms]


def test_start_conclude_and_revert_move_what_serves_without_the_environment(
    sessions: sessionmaker[Session],
) -> None:
    seed_arm(sessions, "v1", agreeing=60, disagreeing=40)
    seed_arm(sessions, "v2", agreeing=85, disagreeing=15)
    with sessions() as session:
        started = experiments.start(
            session=session, arms=SPLIT, actor="ana@crm", reason="try v2", default_version="v1"
        )
        session.commit()
    assert serving_arms(None, "v1", started) == SPLIT  # a server without the variable
    assert started.experiment is not None and started.experiment.describe() == "v1=90,v2=10"
    with sessions() as session, pytest.raises(experiments.ExperimentError, match="runs already"):
        experiments.start(session=session, arms=SPLIT[::-1], actor="a", reason="r",
                          default_version="v1")  # fmt: skip

    with sessions() as session:
        decision = experiments.conclude(session=session, report=report(sessions), actor="ana@crm")
        session.commit()
    assert (decision.template_version, decision.previous_version) == ("v2", "v1")
    assert decision.reason.startswith("arm v2/m1 beats v1/m1")
    assert decision.evidence["split"] == [["v1", "champion", 90.0], ["v2", "champion", 10.0]]
    assert versions(serving_arms(None, "v1", decision)) == ["v2"]
    # A server restarted with another SENTILOOP_TRAFFIC_SPLIT follows the database.
    other = [*SPLIT, TrafficArm(template_version="v3", weight=5)]
    assert versions(serving_arms(other, "v1", decision)) == ["v2"]
    with (
        sessions() as session,
        pytest.raises(experiments.ExperimentError, match="concluded already"),
    ):
        experiments.conclude(
            session=session, report=report(sessions), actor="a", winner_template="v1", reason="r"
        )

    with sessions() as session:
        reverted = experiments.revert(session=session, actor="ana@crm", reason="complaints")
        session.commit()
    assert reverted.template_version == "v1"
    assert serving_arms(None, "v1", reverted) == SPLIT  # the experiment runs again
    with sessions() as session, pytest.raises(experiments.ExperimentError, match="no arm of"):
        experiments.conclude(
            session=session, report=report(sessions), actor="a", winner_template="v3", reason="r"
        )
    with sessions() as session:  # a revert is undone too: concluded, then running again
        again = experiments.revert(session=session, actor="ana@crm", reason="undo the revert")
        assert versions(serving_arms(None, "v1", again)) == ["v2"]
        again = experiments.revert(session=session, actor="ana@crm", reason="once more")
        session.commit()
    assert serving_arms(None, "v1", again) == SPLIT


def test_the_environments_split_is_recorded_once_and_a_restart_undoes_no_decision(
    sessions: sessionmaker[Session],
) -> None:
    def seed(arms: list[TrafficArm]) -> template_decisions.Decision | None:
        with sessions() as session:
            recorded = template_decisions.seed(
                session=session, arms=arms, default_version="v1", actor="server@test"
            )
            session.commit()
            return recorded

    first = seed(SPLIT)
    assert first is not None and serving_arms(None, "v1", first) == SPLIT
    assert seed(SPLIT[::-1]) is None  # the same split, another start: nothing new
    with sessions() as session:
        experiments.conclude(
            session=session, report=report(sessions), actor="a", winner_template="v2", reason="r"
        )
        session.commit()
    assert seed(SPLIT) is None  # restarted with the variable: the conclusion holds
    concluded = latest(sessions)
    assert concluded is not None and versions(serving_arms(SPLIT, "v1", concluded)) == ["v2"]
    changed = [
        TrafficArm(template_version="v1", weight=1),
        TrafficArm(template_version="v2", weight=1),
    ]
    recorded = seed(changed)  # a changed variable is a new experiment
    assert recorded is not None and recorded.template_version == "v2"
    assert serving_arms(None, "v1", recorded) == changed


def test_concurrent_concludes_record_one_decision(sessions: sessionmaker[Session]) -> None:
    seed_arm(sessions, "v1", agreeing=30, disagreeing=70)
    seed_arm(sessions, "v2", agreeing=90, disagreeing=10)
    with sessions() as session:
        experiments.start(session=session, arms=SPLIT, actor="a", reason="r", default_version="v1")
        session.commit()
    reports = [report(sessions) for _ in range(4)]
    barrier = threading.Barrier(len(reports))
    outcomes: list[str] = []

    def conclude(made: experiments.ExperimentReport) -> None:
        with sessions() as session:
            barrier.wait()
            try:
                experiments.conclude(session=session, report=made, actor="ana@crm")
                session.commit()
                outcomes.append("recorded")
            except experiments.ExperimentError as error:
                outcomes.append(str(error))

    threads = [threading.Thread(target=conclude, args=(made,)) for made in reports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    with sessions() as session:
        decisions = template_decisions.history(session=session)
    assert [d.evidence["kind"] for d in decisions] == ["concluded", "started"], outcomes
    assert outcomes.count("recorded") == 1, outcomes
    refused = [o for o in outcomes if o != "recorded"]
    assert all(
        "another decision was recorded at the same time" in o or "since the report" in o
        for o in refused
    ), refused


def test_a_control_right_every_time_still_gets_a_report(sessions: sessionmaker[Session]) -> None:
    """Concluding after an arm was judged right on every row: the report (which conclude
    builds first) said "difference must not be zero" instead."""
    seed_arm(sessions, "v1", agreeing=40, disagreeing=0)
    seed_arm(sessions, "v2", agreeing=30, disagreeing=10)
    [comparison] = report(sessions).comparisons
    assert comparison.control.startswith("v1/") and comparison.difference == pytest.approx(-0.25)
    # 40 of 40 against 30 of 40: the control wins, and the verdict says so.
    assert comparison.significant and (comparison.winner or "").startswith("v1/")
    assert re.match(r"arm v1/\S+ beats v2/\S+ by \+?25\.0 points, p = ", comparison.verdict)
