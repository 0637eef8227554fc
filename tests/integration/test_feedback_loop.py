"""The deeper feedback loop over a real SQLite file and a real PostgreSQL database:
late labels by external id, the experiments report and decisions, the review queue,
label imports."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

import storage
from core.settings import TrafficArm, split_fingerprint
from feedback import experiments
from feedback.imports import ImportFileError, import_feedback
from feedback.review_queue import review_queue
from service.http.routing import serving_arms
from storage import stats, store, template_decisions


def record(
    *,
    label: str = "positive",
    confidence: float = 0.7,
    text: str | None = "great service",
    template: str = "v1",
    model: str = "m1",
    external_id: str | None = None,
    source: str | None = None,
    created_at: datetime | None = None,
    language: str | None = "en",
) -> storage.PredictionRecord:
    rest = (1 - confidence) / 2
    scores = {name: (confidence if name == label else rest) for name in LABELS}
    return storage.PredictionRecord(
        id=storage.time_ordered_id(),
        created_at=created_at or datetime.now(UTC) - timedelta(seconds=1),
        text=text,
        text_storage="raw",
        text_sha256=uuid.uuid4().hex * 2,
        label=label,
        scores=scores,
        model_version=model,
        template_version=template,
        latency_ms=1.0,
        language=language,
        external_id=external_id,
        external_source=source if external_id else None,
    )


LABELS = ("negative", "neutral", "positive")


def insert(sessions: sessionmaker[Session], records: list[storage.PredictionRecord]) -> None:
    with sessions() as session:
        store.insert_predictions(session=session, records=records)
        session.commit()


def judge(sessions: sessionmaker[Session], prediction_id: str, verdict: str) -> None:
    store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=prediction_id, verdict=verdict),  # type: ignore[arg-type]
    )


# --- late labels under the CRM's ids -------------------------------------------------


def test_feedback_by_external_id_judges_the_latest_prediction_before_it(
    sessions: sessionmaker[Session],
) -> None:
    now = datetime.now(UTC)
    first = record(
        label="negative", external_id="T-1", source="zendesk", created_at=now - timedelta(days=3)
    )
    second = record(
        label="neutral", external_id="T-1", source="zendesk", created_at=now - timedelta(days=1)
    )
    other = record(label="positive", external_id="T-2", source="zendesk")
    insert(sessions, [first, second, other])
    result = store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(external_id="T-1", source="zendesk", label="positive"),
    )
    assert result.prediction_id == second.id
    assert result.predicted_label == "neutral"
    assert (result.external_id, result.predictions_with_external_id) == ("T-1", 2)
    assert not result.agrees


def test_feedback_by_external_id_needs_the_source_when_two_systems_used_it(
    sessions: sessionmaker[Session],
) -> None:
    insert(
        sessions,
        [record(external_id="42", source="zendesk"), record(external_id="42", source="hubspot")],
    )
    with pytest.raises(storage.AmbiguousExternalId, match=r"hubspot.*zendesk"):
        store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(external_id="42", label="neutral"),
        )
    result = store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(external_id="42", source="hubspot", label="neutral"),
    )
    assert result.predictions_with_external_id == 1


def test_feedback_by_unknown_external_id_names_it(sessions: sessionmaker[Session]) -> None:
    insert(sessions, [record(external_id="T-9", source="zendesk")])
    with pytest.raises(storage.ExternalIdNotFound, match="'T-404'"):
        store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(external_id="T-404", label="neutral"),
        )
    with pytest.raises(storage.ExternalIdNotFound, match="source='crm'"):
        store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(external_id="T-9", source="crm", label="neutral"),
        )


# --- experiments ------------------------------------------------------------------------


def seed_arm(
    sessions: sessionmaker[Session],
    template: str,
    agreeing: int,
    disagreeing: int,
    unjudged: int = 0,
) -> None:
    rows = [record(template=template) for _ in range(agreeing + disagreeing + unjudged)]
    insert(sessions, rows)
    for n, row in enumerate(rows[: agreeing + disagreeing]):
        judge(sessions, row.id, "correct" if n < agreeing else "incorrect")


def test_report_finds_the_better_arm_with_its_interval_and_test(
    sessions: sessionmaker[Session],
) -> None:
    seed_arm(sessions, "v1", agreeing=60, disagreeing=40, unjudged=10)
    seed_arm(sessions, "v2", agreeing=85, disagreeing=15)
    # A second judgement of a prediction counts once (the latest).
    with sessions() as session:
        arms = {
            a.template_version: a
            for a in stats.arm_counts(session=session, since=datetime.now(UTC) - timedelta(days=1))
        }
    assert (arms["v1"].predictions, arms["v1"].judged, arms["v1"].agreeing) == (110, 100, 60)
    with sessions() as session:
        report = experiments.build_report(
            session=session, since=datetime.now(UTC) - timedelta(days=1), default_template="v1"
        )
    assert report.control == "v1/m1"
    [comparison] = report.comparisons
    assert comparison.significant and comparison.winner == "v2/m1"
    assert comparison.difference == pytest.approx(0.25)
    assert (
        comparison.interval is not None
        and 0 < comparison.interval[0] < 0.25 < comparison.interval[1]
    )
    assert comparison.verdict.startswith("arm v2/m1 beats v1/m1 by +25.0 points, p = ")
    assert report.winner is comparison
    json.dumps(report.to_dict())  # the API's body


def test_report_says_how_much_more_feedback_is_needed(sessions: sessionmaker[Session]) -> None:
    seed_arm(sessions, "v1", agreeing=8, disagreeing=2)
    seed_arm(sessions, "v2", agreeing=9, disagreeing=1)
    with sessions() as session:
        report = experiments.build_report(
            session=session, since=datetime.now(UTC) - timedelta(days=1), default_template="v1"
        )
    [comparison] = report.comparisons
    assert not comparison.significant
    assert comparison.verdict.startswith("not enough feedback yet: ~")
    more = int(comparison.verdict.split("~")[1].split()[0])
    assert more == comparison.rows_needed_per_arm - 10
    with sessions() as session, pytest.raises(experiments.ExperimentError, match="no arm beats"):
        experiments.conclude(session=session, report=report, actor="test")


def test_conclude_and_revert_move_the_default_and_the_split(
    sessions: sessionmaker[Session],
) -> None:
    seed_arm(sessions, "v1", agreeing=60, disagreeing=40)
    seed_arm(sessions, "v2", agreeing=85, disagreeing=15)
    split = [
        TrafficArm(template_version="v1", weight=90),
        TrafficArm(template_version="v2", weight=10),
    ]
    with sessions() as session:
        report = experiments.build_report(
            session=session, since=datetime.now(UTC) - timedelta(days=1), default_template="v1"
        )
        decision = experiments.conclude(
            session=session, report=report, actor="ana@crm", split=split_fingerprint(split)
        )
        session.commit()
    assert (decision.template_version, decision.previous_version, decision.actor) == (
        "v2",
        "v1",
        "ana@crm",
    )
    assert decision.reason.startswith("arm v2/m1 beats v1/m1")
    with sessions() as session:
        latest = template_decisions.latest(session=session)
        assert template_decisions.default_version(session=session, fallback="v1") == "v2"
    assert [a.template_version for a in serving_arms(split, "v1", latest)] == ["v2"]
    assert [a.template_version for a in serving_arms(None, "v1", latest)] == ["v2"]
    other_split = [*split, TrafficArm(template_version="v3", weight=5)]
    assert len(serving_arms(other_split, "v1", latest)) == 3  # a new experiment runs
    with sessions() as session:
        reverted = experiments.revert(session=session, actor="ana@crm", reason="complaints")
        session.commit()
        assert template_decisions.default_version(session=session, fallback="v1") == "v1"
    assert reverted.evidence == {"kind": "reverted", "decision_id": decision.id}
    assert len(serving_arms(split, "v1", reverted)) == 2  # the experiment runs again


# --- review queue ---------------------------------------------------------------------


def test_review_queue_is_uncertain_first_diverse_and_unlabelled(
    sessions: sessionmaker[Session],
) -> None:
    sure = record(confidence=0.95, text="I love it")
    unsure = record(confidence=0.36, text="the delivery was on time but the box was damaged")
    twin = record(confidence=0.35, text="The delivery was ON TIME, but the box was damaged!!")
    middling = record(confidence=0.5, text="okay I guess", language="de")
    judged = record(confidence=0.34, text="no idea what to think")
    textless = record(confidence=0.34, text=None)
    insert(sessions, [sure, unsure, twin, middling, judged, textless])
    judge(sessions, judged.id, "correct")
    with sessions() as session:
        since = datetime.now(UTC) - timedelta(days=1)
        queue = review_queue(session=session, since=since, limit=10)
        assert [item.prediction_id for item in queue] == [twin.id, middling.id, sure.id]
        assert queue[0].margin < queue[1].margin < queue[2].margin
        assert {item.chosen_for for item in queue} == {"uncertainty"}
        german = review_queue(session=session, since=since, limit=10, language="de")
        assert [item.prediction_id for item in german] == [middling.id]
        assert len(review_queue(session=session, since=since, limit=1)) == 1
        # Exploration: a share drawn at random beside the uncertain ones, no repeats.
        mixed = review_queue(session=session, since=since, limit=2, exploration=0.5, seed=1)
        assert [item.chosen_for for item in mixed] == ["uncertainty", "exploration"]
        assert mixed[0].prediction_id == twin.id and mixed[1].prediction_id != twin.id
        explored = review_queue(session=session, since=since, limit=3, exploration=1.0)
        assert {item.chosen_for for item in explored} == {"exploration"}
        ids = {item.prediction_id for item in explored}  # one of the near-duplicate pair
        assert len(ids) == 3 and {middling.id, sure.id} < ids and ids & {twin.id, unsure.id}


# --- imports ------------------------------------------------------------------------------


def test_import_stores_labels_by_id_or_external_id_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    by_id, by_ticket, unlabelled = record(), record(external_id="T-7", source="zendesk"), record()
    insert(sessions, [by_id, by_ticket, unlabelled])
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "prediction_id,external_id,label\n"
        f"{by_id.id},,Negative\n"
        f"{unlabelled.id},,\n"
        ",T-7,2\n"
        f"{by_id.id},,awful\n"
        ",T-404,neutral\n",
        encoding="utf-8",
    )
    summary = import_feedback(csv_file, sessions=sessions, source="zendesk")
    assert (summary.rows, summary.stored, summary.skipped_unlabelled, summary.failed) == (
        5,
        2,
        1,
        2,
    )
    assert summary.errors[0].startswith("row 5: unknown label 'awful'")
    assert summary.errors[1].startswith("row 6: no prediction scored with external_id='T-404'")
    again = import_feedback(csv_file, sessions=sessions, source="zendesk")
    assert (again.stored, again.replayed) == (0, 2)
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(json.dumps({"prediction_id": unlabelled.id, "verdict": "Correct"}) + "\n")
    assert import_feedback(jsonl, sessions=sessions).stored == 1
    bad = tmp_path / "labels.csv"
    bad.write_text("id,stars\n1,5\n")
    with pytest.raises(ImportFileError, match="needs a prediction_id or external_id column"):
        import_feedback(bad, sessions=sessions)
