"""The deeper feedback loop over a real SQLite file and a real PostgreSQL database:
late labels by external id, the experiments report and decisions, the review queue,
label imports."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import storage
from feedback import experiments
from feedback.imports import ImportFileError, import_feedback
from feedback.review_queue import review_queue
from model.labels import parse_label_map
from service.metrics import ApiMetrics
from service.monitoring import refresh_gauges
from storage import ids, stats, store
from storage.models import Feedback, Prediction


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


def test_an_external_id_scored_without_a_source_stays_addressable_beside_two_sources(
    sessions: sessionmaker[Session],
) -> None:
    """Scored without a source and from two sources: feedback without a source judges
    the one scored without (it was a 409 for ever), each source its own."""
    plain, zendesk, hubspot = (
        record(external_id="77", source=None),
        record(external_id="77", source="zendesk"),
        record(external_id="77", source="hubspot"),
    )
    insert(sessions, [plain, zendesk, hubspot])
    for source, meant in ((None, plain), ("zendesk", zendesk), ("hubspot", hubspot)):
        result = store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(external_id="77", source=source, label="neutral"),
        )
        assert (result.prediction_id, result.predictions_with_external_id) == (meant.id, 1)


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


def test_a_second_judgement_counts_once_with_the_later_verdict(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each prediction judged `incorrect`, then `correct`: one trial each, an agreeing
    one. The judgements are made in one millisecond (a label file, a retrying CRM),
    where a time-ordered id's random tail orders two ids by chance; the id clock is
    held still so that every pair falls there (here commits take a few ms)."""
    rows = [record() for _ in range(40)]
    insert(sessions, rows)
    frozen_ns = time.time_ns()
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: frozen_ns))
    for row in rows:
        judge(sessions, row.id, "incorrect")
        judge(sessions, row.id, "correct")
    with sessions() as session:
        [arm] = stats.arm_counts(session=session, since=datetime.now(UTC) - timedelta(days=1))
    assert (arm.predictions, arm.judged, arm.agreeing) == (40, 40, 40)


def gauge(metric: Any, **labels: str) -> float:
    [value] = [
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if all(sample.labels.get(name) == wanted for name, wanted in labels.items())
    ]
    return float(value)


def test_every_agreement_figure_counts_a_twice_corrected_prediction_once(
    sessions: sessionmaker[Session], api_metrics: ApiMetrics
) -> None:
    """The report, sentiloop_experiment_agreement, sentiloop_feedback_accuracy and the
    by-language gauge agree: a ticket corrected twice with the same label (once without
    a key, once with one, as a nightly batch resends it) is one trial."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    language = "pt"
    rows = [record(model=model, language=language) for _ in range(5)]
    insert(sessions, rows)
    for row in rows[:3]:
        judge(sessions, row.id, "correct")
    twice = rows[3]
    for key in (None, "csat-T-1"):
        store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(
                prediction_id=twice.id, label="negative", idempotency_key=key
            ),
        )
    since = datetime.now(UTC) - timedelta(days=1)
    with sessions() as session:
        report = experiments.build_report(session=session, since=since, default_template="v1")
        [version] = stats.feedback_agreement(session=session, since=since)
        [(_, judged_in_language, agreeing_in_language)] = [
            row
            for row in stats.feedback_agreement_by_language(session=session, since=since)
            if row[0] == language
        ]
    [arm] = report.arms
    assert (arm.judged, arm.agreeing) == (4, 3)
    assert (version.agreeing, version.accuracy) == (arm.agreeing, arm.agreement)
    assert (judged_in_language, agreeing_in_language) == (arm.judged, arm.agreeing)
    refresh_gauges(api_metrics, sessions, timedelta(days=1))
    assert arm.interval is not None and arm.agreement is not None
    bounds = {"estimate": arm.agreement, "low": arm.interval[0], "high": arm.interval[1]}
    for bound, value in bounds.items():
        shown = gauge(api_metrics.experiment_agreement, model_version=model, bound=bound)
        assert shown == pytest.approx(value)
    assert gauge(api_metrics.feedback_accuracy, model_version=model) == pytest.approx(arm.agreement)
    assert gauge(api_metrics.feedback_window, model_version=model) == arm.judged
    assert gauge(api_metrics.feedback_accuracy_by_language, language=language) == pytest.approx(
        arm.agreement
    )


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


def test_review_queue_leaves_out_texts_labelled_under_another_prediction(
    sessions: sessionmaker[Session],
) -> None:
    """A text judged once (a ticket scored twice, a template) is not offered again."""
    from dataclasses import replace

    first = record(confidence=0.4, text="not bad at all")
    again = replace(record(confidence=0.35, text="not bad at all"), text_sha256=first.text_sha256)
    other = record(confidence=0.5, text="where is my parcel")
    insert(sessions, [first, again, other])
    since = datetime.now(UTC) - timedelta(days=1)
    with sessions() as session:
        before = review_queue(session=session, since=since, limit=5, exploration=0.5, seed=1)
    assert again.id in {item.prediction_id for item in before}
    judge(sessions, first.id, "correct")
    with sessions() as session:
        for exploration in (0.0, 1.0):
            queue = review_queue(session=session, since=since, limit=5, exploration=exploration)
            assert [item.prediction_id for item in queue] == [other.id], exploration


def test_review_queue_fills_when_near_duplicates_crowd_the_least_confident(
    sessions: sessionmaker[Session],
) -> None:
    """Traffic of one template ("order 17 late", "order 18 late") is one text to a
    labeller; when it fills the first pool the queue looks further instead of
    coming back short (seen in the e2e review-queue test after other traffic)."""
    from feedback import review_queue as queue_module

    crowd = [
        record(confidence=0.34, text=f"order {n} arrived late")
        for n in range(queue_module.POOL_FACTOR * 3)
    ]
    distinct = [
        record(confidence=0.4, text="the colour is not what the photo showed"),
        record(confidence=0.41, text="could you tell me where my refund is"),
    ]
    insert(sessions, [*crowd, *distinct])
    with sessions() as session:
        since = datetime.now(UTC) - timedelta(days=1)
        queue = review_queue(session=session, since=since, limit=3, exploration=0.0)
    assert len(queue) == 3
    assert {item.prediction_id for item in queue[1:]} == {row.id for row in distinct}


def test_review_queue_exploration_fills_when_near_duplicates_crowd_the_random_draw(
    sessions: sessionmaker[Session],
) -> None:
    """The random share looks further too: a draw of busy one-template traffic can be
    all near-duplicates of what is chosen (CI's e2e review-queue test came back one
    row short that way)."""
    from feedback import review_queue as queue_module

    crowd = [
        record(confidence=0.9, text=f"order {n} arrived late")
        for n in range(queue_module.POOL_FACTOR * 20)
    ]
    rare = record(confidence=0.95, text="could you tell me where my refund is")
    insert(sessions, [*crowd, rare])
    with sessions() as session:
        since = datetime.now(UTC) - timedelta(days=1)
        for seed in range(5):
            queue = review_queue(session=session, since=since, limit=2, exploration=1.0, seed=seed)
            assert len(queue) == 2, seed
            assert rare.id in {item.prediction_id for item in queue}


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
    summary = import_feedback(csv_file, sessions=sessions, text_storage="raw", source="zendesk")
    assert (summary.rows, summary.stored, summary.skipped_unlabelled, summary.failed) == (
        5,
        2,
        1,
        2,
    )
    assert summary.errors[0].startswith("row 5: label: unknown label 'awful'")
    assert summary.errors[1].startswith("row 6: no prediction scored with external_id='T-404'")
    again = import_feedback(csv_file, sessions=sessions, text_storage="raw", source="zendesk")
    assert (again.stored, again.replayed) == (0, 2)
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(json.dumps({"prediction_id": unlabelled.id, "verdict": "Correct"}) + "\n")
    assert import_feedback(jsonl, sessions=sessions, text_storage="raw").stored == 1
    bad = tmp_path / "labels.csv"
    bad.write_text("id,stars\n1,5\n")
    with pytest.raises(ImportFileError, match="needs a prediction_id or external_id column"):
        import_feedback(bad, sessions=sessions, text_storage="raw")


def stored_comments(sessions: sessionmaker[Session]) -> dict[str, str | None]:
    with sessions() as session:
        return dict(session.execute(select(Feedback.prediction_id, Feedback.comment)).all())


def test_import_takes_the_api_way_in_and_reports_bad_rows_by_number(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Issue 24, items 14 and 20: the API's limits and redaction apply to imported rows;
    a row the API would refuse (a 150-character source, a NUL in a comment, a comment
    in a field over the csv module's 128 KiB limit) is reported by its row number, one
    line each, and the rows after it are imported."""
    rows = [record() for _ in range(5)]
    insert(sessions, rows)
    lines = [
        "prediction_id,label,comment,source",
        f"{rows[0].id},negative,call +44 20 7946 0958 or ann@example.com,crm",
        f"{rows[1].id},negative,fine,{'s' * 150}",
        f"{rows[2].id},negative,bad\x00byte,crm",
        f'{rows[3].id},negative,"{"x" * 1_000_000}",crm',
        f"{rows[4].id},positive,card 4111 1111 1111 1111 123,crm",
    ]
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = import_feedback(csv_file, sessions=sessions, text_storage="redacted")
    assert (summary.rows, summary.stored, summary.failed) == (5, 2, 3)
    assert [error.split(":")[0] for error in summary.errors] == ["row 3", "row 4", "row 5"]
    assert summary.errors[0].startswith("row 3: source: String should have at most 100")
    assert summary.errors[1].startswith("row 4: comment: contains a NUL character")
    assert summary.errors[2].startswith("row 5: comment: String should have at most 2000")
    assert all("\n" not in error for error in summary.errors)
    comments = stored_comments(sessions)
    assert comments[rows[0].id] == "call [PHONE] or [EMAIL]"
    assert "4111" not in str(comments[rows[4].id]) and "[CARD]" in str(comments[rows[4].id])
    assert set(comments) == {rows[0].id, rows[4].id}


def test_import_keeps_no_comment_when_texts_are_not_stored(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    row = record()
    insert(sessions, [row])
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text(
        "not json\n"
        + json.dumps({"prediction_id": row.id, "label": "neutral", "comment": "mail a@b.co"})
        + "\n"
    )
    summary = import_feedback(jsonl, sessions=sessions, text_storage="none")
    assert (summary.stored, summary.failed) == (1, 1)
    assert summary.errors == ["row 1: not JSON (Expecting value)"]
    assert stored_comments(sessions) == {row.id: None}


def test_import_reads_csat_scores_through_a_label_map(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    tickets = [record(external_id=f"T-{n}", source="zendesk") for n in range(1, 5)]
    insert(sessions, tickets)
    csv_file = tmp_path / "csat.csv"
    csv_file.write_text("external_id,label\nT-1,1\nT-2,3\nT-3,5\nT-4,7\n")
    summary = import_feedback(
        csv_file,
        sessions=sessions,
        text_storage="raw",
        source="zendesk",
        label_map=parse_label_map("stars5"),
    )
    assert (summary.stored, summary.failed) == (3, 1)
    assert summary.errors == ["row 5: label: '7' is not in the label map ('1', '2', '3', '4', '5')"]
    with sessions() as session:
        labels = dict(
            session.execute(
                select(Prediction.external_id, Feedback.label).join(
                    Prediction, Feedback.prediction_id == Prediction.id
                )
            ).all()
        )
    assert labels == {"T-1": "negative", "T-2": "neutral", "T-3": "positive"}


def test_import_refuses_labels_that_are_only_0_and_1_without_a_label_map(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Read as class ids, every 1 of a binary file would be stored as neutral, and
    stored feedback cannot be taken back: the file needs a map saying which it is."""
    from feedback.imports import ImportFileError

    tickets = [record(external_id=f"T-{n}", source="zendesk") for n in range(1, 4)]
    insert(sessions, tickets)
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text("external_id,label\nT-1,0\nT-2,1\nT-3,\n")
    with pytest.raises(ImportFileError, match="--label-map binary"):
        import_feedback(csv_file, sessions=sessions, text_storage="raw", source="zendesk")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 0
    summary = import_feedback(
        csv_file,
        sessions=sessions,
        text_storage="raw",
        source="zendesk",
        label_map=parse_label_map("binary"),
    )
    assert (summary.stored, summary.skipped_unlabelled) == (2, 1)
    three = tmp_path / "three.csv"  # class ids with a 2 among them are read as ids
    three.write_text("external_id,label\nT-3,2\n")
    assert (
        import_feedback(three, sessions=sessions, text_storage="raw", source="zendesk").stored == 1
    )
