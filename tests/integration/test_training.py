"""The training loop on a real SQLite store, a real BentoML model store and a tiny model."""

from __future__ import annotations

import csv
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import storage
from core.settings import Settings
from model import model_store
from model.loader import load_classifier
from storage import model_roles, runs, store
from storage.models import TrainingRun
from training import AssemblyConfig, GateConfig, Schedule, TrainingArguments, run_schedule
from training.dataset import DatasetTooSmall
from training.examples import DataFileError
from training.pipeline import (
    DataSource,
    TrainingBusy,
    TrainingPipeline,
    TrainingPlan,
    score_examples,
)
from training.promotion import PromotionError, rollback

THINGS = ["delivery", "support team", "app", "refund process", "invoice", "store", "product"]
PATTERNS = {
    "positive": ["I love the {}", "the {} was great, thanks", "really happy with the {}"],
    "negative": ["I hate the {}", "the {} was awful", "very angry about the {}"],
    "neutral": ["where is the {}", "the {} is on page two", "question about the {}"],
}


def write_base_data(path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for label, patterns in PATTERNS.items():
            for pattern in patterns:
                for thing in THINGS:
                    writer.writerow([pattern.format(thing), label])
    return path


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path, bentoml_home: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        base_model=str(tiny_model_dir),
        model_name=f"train-test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[TrainingPipeline]:
    pipeline = TrainingPipeline(settings)
    yield pipeline
    pipeline.close()


def plan(tmp_path: Path, **gate: float) -> TrainingPlan:
    return TrainingPlan(
        base_data=DataSource(write_base_data(tmp_path / "base.csv")),
        assembly=AssemblyConfig(holdout_fraction=0.25, validation_fraction=0.1),
        arguments=TrainingArguments(epochs=1, batch_size=16, max_length=32, progress=False),
        gate=GateConfig(**gate),  # type: ignore[arg-type]
    )


ALWAYS = {"significance": 1.0, "base_tolerance": 1.0}
NEVER = {"significance": 1e-300}


def champion(pipeline: TrainingPipeline) -> str | None:
    with pipeline.sessions() as session:
        return model_roles.current(session=session, role="champion")


def test_run_saves_candidate_with_metadata_records_run_and_writes_report(
    pipeline: TrainingPipeline, tmp_path: Path
) -> None:
    outcome = pipeline.run(plan(tmp_path, **ALWAYS))
    assert outcome.decision == "promoted" and champion(pipeline) == outcome.candidate_tag
    stored = model_store.get_model(outcome.candidate_tag)
    for key in (
        "base_model",
        "template_versions",
        "data_sha256",
        "counts",
        "metrics",
        "parent_model",
    ):
        assert key in stored.metadata, key
    assert stored.metadata["template_versions"] == ["v1"]
    assert stored.metadata["parent_model"].startswith("zero-shot:")
    assert stored.metadata["training"]["temperature"] > 0
    assert stored.metadata["training_run_id"] == outcome.run_id
    with pipeline.sessions() as session:
        run = session.get(TrainingRun, outcome.run_id)
        assert run is not None and run.status == "succeeded" and run.decision == "promoted"
        assert run.counts["train"] > 0 and run.finished_at is not None
        assert set(run.metrics["holdout"]) == {"candidate", "champion"}
    report = json.loads((outcome.report_dir / "report.json").read_text())
    holdout = report["evaluation"]["holdout"]
    assert holdout["candidate"]["n"] == holdout["champion"]["n"] > 0  # same rows for both
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "ece"):
        assert key in holdout["candidate"]
    assert "promoted" in (outcome.report_dir / "summary.txt").read_text()
    assert (outcome.report_dir / "holdout-candidate.png").stat().st_size > 1000
    # Evaluation equals serving: the stored candidate, loaded by the loader serving
    # uses, scores the same holdout rows exactly as the gate saw them.
    served, _ = load_classifier(pipeline.settings, outcome.candidate_tag)
    assert served.runtime == "onnx-int8"  # the CPU default, not training's torch fp32
    dataset = pipeline.dataset(plan(tmp_path, **ALWAYS), None)
    rescored = score_examples(served, pipeline.templates.get("v1"), dataset.holdout)
    for key in ("n", "accuracy", "macro_f1", "confusion_matrix"):
        assert rescored[key] == holdout["candidate"][key], key


def test_gate_keeps_a_candidate_that_is_not_better_as_challenger(
    pipeline: TrainingPipeline, tmp_path: Path
) -> None:
    first = pipeline.run(plan(tmp_path, **ALWAYS))
    second = pipeline.run(plan(tmp_path, **NEVER))
    assert second.decision == "challenger" and "kept the champion" in second.reason
    assert champion(pipeline) == first.candidate_tag
    with pipeline.sessions() as session:
        assert model_roles.current(session=session, role="challenger") == second.candidate_tag
    assert second.report["champion"] == first.candidate_tag
    # The second run continued from the champion's weights; the first from the base.
    first_metadata = model_store.get_model(first.candidate_tag).metadata
    second_metadata = model_store.get_model(second.candidate_tag).metadata
    assert first_metadata["started_from"] == f"base:{pipeline.settings.base_model}"
    assert second_metadata["started_from"] == first.candidate_tag
    assert first_metadata["languages"] == second_metadata["languages"] == ["en"]
    assert second.report["gate"]["primary"] == "holdout"
    assert 0 < second.report["gate"]["p_value"] <= 1


def test_logged_feedback_is_trained_on(pipeline: TrainingPipeline, tmp_path: Path) -> None:
    records = []
    now = datetime.now(UTC) - timedelta(minutes=1)
    for n in range(40):
        records.append(
            storage.PredictionRecord(
                id=str(uuid.uuid4()),
                created_at=now,
                text=f"my parcel number {n} is late",
                text_storage="raw",
                text_sha256=str(n),
                label="neutral",
                scores={"negative": 0.3, "neutral": 0.4, "positive": 0.3},
                model_version="zero-shot:x",
                template_version="v1",
                latency_ms=1.0,
            )
        )
    with pipeline.sessions() as session:
        store.insert_predictions(session=session, records=records)
        session.commit()
    for n, record in enumerate(records):
        item = (
            storage.FeedbackInput(prediction_id=record.id, verdict="incorrect")
            if n % 10 == 0
            else storage.FeedbackInput(prediction_id=record.id, label="negative")
        )
        store.record_feedback(session_factory=pipeline.sessions, feedback=item)
    outcome = pipeline.run(plan(tmp_path, **ALWAYS))
    dataset = outcome.report["dataset"]
    assert dataset["counts"]["feedback_examples"] == 36
    assert dataset["dropped"]["feedback_incorrect_without_label"] == 4
    assert dataset["counts"]["train_from_feedback"] + dataset["counts"]["feedback_holdout"] == 36
    assert (
        outcome.report["evaluation"]["feedback_holdout"]["candidate"]["n"]
        == dataset["counts"]["feedback_holdout"]
    )


def test_rollback_to_previous_and_to_a_named_model(
    pipeline: TrainingPipeline, tmp_path: Path
) -> None:
    first = pipeline.run(plan(tmp_path, **ALWAYS))
    second = pipeline.run(plan(tmp_path, **ALWAYS))
    assert champion(pipeline) == second.candidate_tag
    assert rollback(sessions=pipeline.sessions).model_tag == first.candidate_tag
    assert champion(pipeline) == first.candidate_tag
    rollback(sessions=pipeline.sessions, tag=second.candidate_tag)
    assert champion(pipeline) == second.candidate_tag
    with pytest.raises(model_store.ModelNotFound):
        rollback(sessions=pipeline.sessions, tag="nope:nope")


def test_rollback_without_history_is_refused(pipeline: TrainingPipeline) -> None:
    with pytest.raises(PromotionError, match="no earlier champion"):
        rollback(sessions=pipeline.sessions)


def test_lock_prevents_two_runs_at_once(pipeline: TrainingPipeline, tmp_path: Path) -> None:
    runs.acquire_lock(
        session_factory=pipeline.sessions, name="training", holder="other", ttl=timedelta(hours=1)
    )
    with pytest.raises(TrainingBusy, match="held by other"):
        pipeline.run(plan(tmp_path, **ALWAYS))
    runs.release_lock(session_factory=pipeline.sessions, name="training", holder="other")
    assert pipeline.run(plan(tmp_path, **ALWAYS)).decision == "promoted"


def test_an_expired_lock_is_taken_over(pipeline: TrainingPipeline) -> None:
    runs.acquire_lock(
        session_factory=pipeline.sessions, name="x", holder="a", ttl=timedelta(seconds=-1)
    )
    runs.acquire_lock(
        session_factory=pipeline.sessions, name="x", holder="b", ttl=timedelta(hours=1)
    )
    with pytest.raises(runs.LockHeld, match="held by b"):
        runs.acquire_lock(
            session_factory=pipeline.sessions, name="x", holder="c", ttl=timedelta(hours=1)
        )


def test_invalid_data_is_refused_before_a_run_is_recorded(
    pipeline: TrainingPipeline, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,mixed\n")
    with pytest.raises(DataFileError, match="'mixed' \\(1 rows, first row 2\\)"):
        pipeline.run(replace(plan(tmp_path, **ALWAYS), base_data=DataSource(bad)))
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("text,label\ngreat,positive\nawful,negative\nfine,positive\n,neutral\n")
    with pytest.raises(DatasetTooSmall) as caught:
        pipeline.run(replace(plan(tmp_path, **ALWAYS), base_data=DataSource(tiny)))
    assert "too little data to train" in str(caught.value)
    assert "after drops (base_empty_text 1" in str(caught.value)
    with pipeline.sessions() as session:
        assert session.scalars(select(TrainingRun)).all() == []
    assert pipeline.run(plan(tmp_path, **ALWAYS)).decision == "promoted"  # the lock was freed


def test_a_failing_run_is_recorded_and_releases_the_lock(
    pipeline: TrainingPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr("training.pipeline.fine_tune", out_of_disk)
        with pytest.raises(OSError, match="No space left"):
            pipeline.run(plan(tmp_path, **ALWAYS))
    with pipeline.sessions() as session:
        [run] = session.scalars(select(TrainingRun)).all()
        assert run.status == "failed" and "No space left" in (run.error or "")
    assert pipeline.run(plan(tmp_path, **ALWAYS)).decision == "promoted"


def test_schedule_retrains_when_enough_feedback_arrived(
    pipeline: TrainingPipeline, tmp_path: Path
) -> None:
    record = storage.PredictionRecord(
        id=str(uuid.uuid4()), created_at=datetime.now(UTC), text="late again", text_storage="raw",
        text_sha256="x", label="neutral", scores={"negative": 0.3, "neutral": 0.4, "positive": 0.3},
        model_version="m", template_version="v1", latency_ms=1.0,
    )  # fmt: skip
    with pipeline.sessions() as session:
        store.insert_predictions(session=session, records=[record])
        session.commit()
    schedule = Schedule(min_new_feedback=2, interval_s=3600, poll_s=0.05)
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)
    timer.start()
    store.record_feedback(
        session_factory=pipeline.sessions,
        feedback=storage.FeedbackInput(prediction_id=record.id, verdict="correct"),
    )
    store.record_feedback(
        session_factory=pipeline.sessions,
        feedback=storage.FeedbackInput(prediction_id=record.id, label="negative"),
    )
    outcomes = run_schedule(pipeline, plan(tmp_path, **ALWAYS), schedule, stop, max_runs=1)
    timer.cancel()
    assert len(outcomes) == 1
    with pipeline.sessions() as session:
        [run] = runs.list_runs(session=session)
        assert run.trigger == "schedule:feedback"
        # What that run saw no longer counts as new.
        assert (
            runs.count_feedback_since(
                session=session, since=runs.last_successful_cutoff(session=session)
            )
            == 0
        )
