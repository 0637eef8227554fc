"""Retraining that keeps what the champion knows (issue 20), on a real SQLite store, a
real BentoML model store and a tiny model: rehearsal rows come from the logged
traffic without feedback and carry the champion's probabilities; a LoRA candidate
is stored as a small delta on its parent that serves the scores the gate saw."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

import storage
from core.settings import Settings
from model import corrections, deltas, model_store
from model.labels import LABELS
from model.loader import load_classifier
from storage import store
from training import AssemblyConfig, GateConfig, TrainingArguments
from training.finetune import class_weights
from training.pipeline import DataSource, TrainingPipeline, TrainingPlan, score_examples
from training.rehearsal import pick_texts, soft_labelled

from .test_training import ALWAYS, write_base_data

ARGUMENTS = TrainingArguments(epochs=1, batch_size=16, max_length=32, progress=False)
REVIEWS = {
    "positive": "the {} in this kit is excellent",
    "negative": "the {} in this kit broke at once",
}
PARTS = ["handle", "lid", "strap", "hinge", "screen", "button", "cable", "battery", "zip",
         "wheel", "buckle", "seal", "clip", "fan", "knob", "plug", "pump", "valve", "lens",
         "spring"]  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path, bentoml_home: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        base_model=str(tiny_model_dir),
        model_name=f"recipe-test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[TrainingPipeline]:
    pipeline = TrainingPipeline(settings)
    yield pipeline
    pipeline.close()


def log(pipeline: TrainingPipeline, texts: list[str]) -> list[str]:
    """Log ``texts`` as predictions (as the service does); their ids."""
    moment = datetime.now(UTC) - timedelta(minutes=1)
    records = [
        storage.PredictionRecord(
            id=str(uuid.uuid4()),
            created_at=moment,
            text=text,
            text_storage="raw",
            text_sha256=str(n),
            label="neutral",
            scores={"negative": 0.3, "neutral": 0.4, "positive": 0.3},
            model_version="m",
            template_version="v1",
            latency_ms=1.0,
        )
        for n, text in enumerate(texts)
    ]
    with pipeline.sessions() as session:
        store.insert_predictions(session=session, records=records)
        session.commit()
    return [record.id for record in records]


def first_champion(pipeline: TrainingPipeline, tmp_path: Path) -> str:
    outcome = pipeline.run(
        TrainingPlan(
            base_data=DataSource(write_base_data(tmp_path / "base.csv")),
            assembly=AssemblyConfig(holdout_fraction=0.25, validation_fraction=0.1),
            arguments=ARGUMENTS,
            gate=GateConfig(**ALWAYS),  # type: ignore[arg-type]
            start_from="base",
        )
    )
    assert outcome.decision == "promoted"
    return outcome.candidate_tag


def test_class_weights_give_each_label_the_same_total_weight() -> None:
    labels = ["positive"] * 6 + ["negative"] * 2
    weights = class_weights(labels)
    assert weights["positive"] * 6 == pytest.approx(weights["negative"] * 2)
    assert sum(weights[label] for label in labels) == pytest.approx(len(labels))


def test_rehearsal_texts_skip_labelled_and_held_out_texts_and_are_labelled_by_the_champion(
    pipeline: TrainingPipeline, settings: Settings, tmp_path: Path
) -> None:
    tag = first_champion(pipeline, tmp_path)
    champion, _ = load_classifier(settings, tag)
    template = pipeline.templates.get("v1")
    texts = [f"question about the {part}" for part in PARTS]
    picked = pick_texts([*texts, texts[0].upper()], {texts[1].lower()}, 100, seed=1)
    # One per key, none excluded, half of them at most (the rest: the traffic guard's).
    assert len(picked) == (len(texts) - 1) // 2 and texts[1] not in picked
    assert {text.lower() for text in picked} <= {text.lower() for text in texts}
    assert pick_texts(texts, set(), 3, seed=1) == pick_texts(texts, set(), 3, seed=1)
    rows = soft_labelled(picked, champion, template, weight=0.5)
    served = champion.predict([template.render(text) for text in picked], template)
    for row, scores in zip(rows, served, strict=True):
        assert row.probabilities == pytest.approx(tuple(scores[label] for label in LABELS))
        assert sum(row.probabilities) == pytest.approx(1.0) and row.weight == 0.5


def give_feedback(pipeline: TrainingPipeline, reviews: list[tuple[str, str]]) -> None:
    ids = log(pipeline, [text for text, _ in reviews])
    for prediction_id, (_, label) in zip(ids, reviews, strict=True):
        store.record_feedback(
            session_factory=pipeline.sessions,
            feedback=storage.FeedbackInput(prediction_id=prediction_id, label=label),
        )


def test_the_default_retraining_stores_a_correction_that_changes_nothing_far_from_the_feedback(
    pipeline: TrainingPipeline, settings: Settings, tmp_path: Path
) -> None:
    parent = first_champion(pipeline, tmp_path)
    reviews = [(pattern.format(part), label) for part in PARTS
               for label, pattern in REVIEWS.items()]  # fmt: skip
    give_feedback(pipeline, reviews)
    # `sentiloop train`'s defaults: no base data, a correction of the champion.
    outcome = pipeline.run(TrainingPlan(arguments=ARGUMENTS, gate=GateConfig(**ALWAYS)))  # type: ignore[arg-type]
    stored = model_store.get_model(outcome.candidate_tag)
    assert stored.metadata["stored_as"] == "correction"
    assert corrections.parent_of(stored.path) == parent
    assert outcome.report["training"]["recipe"] == "correction"
    assert outcome.report["dataset"]["counts"].get("rehearsal", 0) == 0
    parent_bytes = sum(f.stat().st_size for f in model_store.get_model(parent).path.rglob("*"))
    stored_bytes = sum(f.stat().st_size for f in stored.path.rglob("*") if f.is_file())
    assert stored_bytes < parent_bytes / 2

    template = pipeline.templates.get("v1")
    served, _ = load_classifier(settings, outcome.candidate_tag)
    champion, _ = load_classifier(settings, parent)
    # Texts unlike any the team judged: answered exactly as the parent answers them.
    far = ["¿Dónde está la estación de tren más cercana?", "42 + 17 = 59",
           "Der Zug nach Berlin fährt um acht Uhr ab.", "http://example.com/a/b?c=d"]  # fmt: skip
    rendered = [template.render(text) for text in far]
    for corrected, original in zip(
        served.predict(rendered, template), champion.predict(rendered, template), strict=True
    ):
        assert corrected == pytest.approx(original, abs=1e-6)
    # Texts like the feedback: answered differently (the correction applies there).
    near = [template.render(text) for text, _ in reviews]
    changed = [
        max(abs(a[label] - b[label]) for label in LABELS)
        for a, b in zip(
            served.predict(near, template), champion.predict(near, template), strict=True
        )
    ]
    assert max(changed) > 0.01
    # Served from the store, it scores the feedback holdout as the gate saw it.
    dataset = pipeline.dataset(TrainingPlan(), store.utcnow())
    metrics = score_examples(served, template, dataset.feedback_holdout)
    evaluated = outcome.report["evaluation"]["feedback_holdout"]["candidate"]
    assert metrics["n"] == evaluated["n"] > 0
    assert metrics["macro_f1"] == pytest.approx(evaluated["macro_f1"], abs=1e-6)

    # A second round corrects the parent again (with all the feedback): never a
    # correction of a correction.
    from storage import model_roles

    with pipeline.sessions() as session:
        model_roles.assign(session=session, role="champion", model_tag=outcome.candidate_tag,
                           reason="test")  # fmt: skip
        session.commit()
    give_feedback(pipeline, [(f"my {part} arrived late", "negative") for part in PARTS])
    second = pipeline.run(TrainingPlan(arguments=ARGUMENTS, gate=GateConfig(**ALWAYS)))  # type: ignore[arg-type]
    assert corrections.parent_of(model_store.get_model(second.candidate_tag).path) == parent


def test_retraining_rehearses_logged_traffic_and_stores_a_delta_that_serves_the_same_scores(
    pipeline: TrainingPipeline, settings: Settings, tmp_path: Path
) -> None:
    parent = first_champion(pipeline, tmp_path)
    reviews = [(pattern.format(part), label) for part in PARTS
               for label, pattern in REVIEWS.items()]  # fmt: skip
    ids = log(pipeline, [text for text, _ in reviews])
    for prediction_id, (_, label) in zip(ids, reviews, strict=True):
        store.record_feedback(
            session_factory=pipeline.sessions,
            feedback=storage.FeedbackInput(prediction_id=prediction_id, label=label),
        )
    traffic = [f"is the {part} sold separately" for part in PARTS]
    log(pipeline, traffic)
    # The labelled reviews scored again, without feedback this time: logged texts that
    # are labelled (or held out) are never rehearsed; only the traffic is.
    log(pipeline, [text.upper() for text, _ in reviews])
    # No base data: a team's feedback only; the encoder fine-tuned (a LoRA adapter).
    outcome = pipeline.run(
        TrainingPlan(
            arguments=TrainingArguments(
                recipe="fine-tune", epochs=1, batch_size=16, max_length=32, progress=False
            ),
            gate=GateConfig(**ALWAYS),  # type: ignore[arg-type]
        )
    )
    counts = outcome.report["dataset"]["counts"]
    # Half the candidates at most (the traffic guard keeps the other half): half the
    # traffic, where the labelled texts logged again would have made it more.
    assert counts["rehearsal"] == len(traffic) // 2 > 0
    assert outcome.report["training"]["rehearsal_examples"] == counts["rehearsal"]

    stored = model_store.get_model(outcome.candidate_tag)
    assert stored.metadata["stored_as"] == "delta" and deltas.parent_of(stored.path) == parent
    parent_bytes = sum(f.stat().st_size for f in model_store.get_model(parent).path.rglob("*"))
    stored_bytes = sum(f.stat().st_size for f in stored.path.rglob("*") if f.is_file())
    assert stored_bytes < parent_bytes / 2
    # Served from the store (merged onto its parent), it scores the feedback holdout
    # exactly as the candidate the gate evaluated before it was stored.
    dataset = pipeline.dataset(TrainingPlan(), store.utcnow())
    served, _ = load_classifier(settings, outcome.candidate_tag)
    metrics = score_examples(served, pipeline.templates.get("v1"), dataset.feedback_holdout)
    evaluated = outcome.report["evaluation"]["feedback_holdout"]["candidate"]
    assert metrics["n"] == evaluated["n"] > 0
    for key in ("accuracy", "macro_f1", "ece", "mean_confidence"):
        assert metrics[key] == pytest.approx(evaluated[key], abs=1e-6), key


def test_recent_unlabelled_texts_are_logged_texts_without_feedback_before_the_cutoff(
    sessions: sessionmaker[Session],
) -> None:
    moment = datetime.now(UTC) - timedelta(hours=1)

    def record(n: int, text: str | None, at: datetime) -> storage.PredictionRecord:
        return storage.PredictionRecord(
            id=str(uuid.uuid4()), created_at=at, text=text,
            text_storage="raw" if text else "none", text_sha256=str(n), label="neutral",
            scores={"negative": 0.3, "neutral": 0.4, "positive": 0.3},
            model_version="m", template_version="v1", latency_ms=1.0,
        )  # fmt: skip

    judged = record(0, "judged", moment)
    records = [
        judged,
        record(1, "older", moment),
        record(2, None, moment),
        record(3, "newer", moment + timedelta(minutes=1)),
        record(4, "after the cutoff", moment + timedelta(minutes=30)),
    ]
    with sessions() as session:
        store.insert_predictions(session=session, records=records)
        session.commit()
    store.record_feedback(
        session_factory=sessions,
        feedback=storage.FeedbackInput(prediction_id=judged.id, label="positive"),
    )
    cutoff = moment + timedelta(minutes=10)
    with sessions() as session:
        assert store.recent_unlabelled_texts(session=session, until=cutoff, limit=10) == [
            "newer",
            "older",
        ]
        assert store.recent_unlabelled_texts(session=session, until=cutoff, limit=1) == ["newer"]
        assert store.recent_unlabelled_texts(session=session, until=cutoff, limit=0) == []
