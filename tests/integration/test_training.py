"""The training loop on a real SQLite store, a real BentoML model store and a tiny model."""

from __future__ import annotations

import csv
import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import storage
from core.settings import Settings
from model import model_store
from model.loader import load_classifier
from model.shipped import GENERAL_GUARD
from sentiloop.cli import app
from service.metrics import ApiMetrics
from service.monitoring import refresh_gauges
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


ALWAYS = {"significance": 1.0, "base_tolerance": 1.0, "flip_tolerance": 1.0}
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
    # Calibrated on the validation split: a temperature was fitted (1.0 is uncalibrated)
    # and the rescoring below matches the gate's confidence figures (ECE) too.
    assert stored.metadata["training"]["temperature"] != 1.0
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
    for key in ("n", "accuracy", "macro_f1", "confusion_matrix", "ece"):
        assert rescored[key] == holdout["candidate"][key], key


def test_a_kept_candidate_is_the_challenger_and_the_next_run_starts_from_the_champion(
    pipeline: TrainingPipeline, tmp_path: Path
) -> None:
    """The bookkeeping of a kept candidate (a gate set to keep any: whether a worse
    candidate is kept is `test_fine_tuning_learns_..._then_keeps_the_champion`'s)."""
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
    counts = dataset["counts"]
    assert (
        counts["train_from_feedback"]
        + counts["validation_from_feedback"]
        + counts["feedback_holdout"]
        == 36
    )
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
    assert (
        rollback(settings=pipeline.settings, sessions=pipeline.sessions).model_tag
        == first.candidate_tag
    )
    assert champion(pipeline) == first.candidate_tag
    rollback(settings=pipeline.settings, sessions=pipeline.sessions, tag=second.candidate_tag)
    assert champion(pipeline) == second.candidate_tag
    with pytest.raises(model_store.ModelNotFound):
        rollback(settings=pipeline.settings, sessions=pipeline.sessions, tag="nope:nope")


def test_rollback_without_history_is_refused(pipeline: TrainingPipeline) -> None:
    with pytest.raises(PromotionError, match="no earlier champion"):
        rollback(settings=pipeline.settings, sessions=pipeline.sessions)


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


FRENCH = [
    "je suis très content du colis",
    "le service client est horrible",
    "où est ma facture",
    "merci pour la livraison rapide",
    "produit cassé et inutile",
]


def log_predictions(
    pipeline: TrainingPipeline, texts: list[str], language: str
) -> list[storage.PredictionRecord]:
    """``texts`` as the service logs them (answered neutral, ``language`` detected)."""
    now = datetime.now(UTC) - timedelta(minutes=1)
    records = [
        storage.PredictionRecord(
            id=str(uuid.uuid4()),
            created_at=now,
            text=text,
            text_storage="redacted",
            text_sha256=str(uuid.uuid4()),
            label="neutral",
            scores={"negative": 0.3, "neutral": 0.4, "positive": 0.3},
            model_version="m",
            template_version="v1",
            latency_ms=1.0,
            language=language,
        )
        for text in texts
    ]
    with pipeline.sessions() as session:
        store.insert_predictions(session=session, records=records)
        session.commit()
    return records


def test_a_candidate_that_forgets_a_language_is_refused_with_the_gate_defaults(
    pipeline: TrainingPipeline, api_metrics: ApiMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20: feedback only (no base data, no holdout file) and the gate's defaults.
    The candidate learns the English corrections and rewrites its answers to French
    traffic nobody corrected: kept, the reason naming French and the share changed."""
    english = [
        (f"{pattern.format(thing)} (order {n})", label)
        for label, patterns in PATTERNS.items()
        for pattern in patterns
        for thing in THINGS
        for n in range(5)
    ]
    records = log_predictions(pipeline, [text for text, _ in english], "en")
    for record, (_, label) in zip(records, english, strict=True):
        store.record_feedback(
            session_factory=pipeline.sessions,
            feedback=storage.FeedbackInput(prediction_id=record.id, label=label),
        )
    log_predictions(pipeline, [f"{text} {n}" for text in FRENCH for n in range(40)], "fr")
    # Enough epochs (and a step large enough) for the tiny random model to learn.
    fast = TrainingArguments(
        epochs=5, patience=5, batch_size=16, max_length=32, learning_rate=5e-3, progress=False
    )
    feedback_only = TrainingPlan(arguments=fast)
    kept = pipeline.run(feedback_only)
    french = kept.report["traffic_guard"]["languages"]["fr"]
    assert french["rows"] == 200 and french["corrections"] == 0
    assert french["changed_share"] > feedback_only.gate.flip_tolerance
    assert kept.decision == "challenger" and champion(pipeline) is None
    # It did learn the corrections: better on the feedback holdout by more than chance.
    assert kept.report["gate"]["p_value"] <= feedback_only.gate.significance, kept.reason
    assert f"changes {100 * french['changed_share']:.1f}% of the 200 answers in fr" in kept.reason
    assert "more than the corrections asked" in kept.reason
    # Visible per class and per language in the recorded run.
    with pipeline.sessions() as session:
        run = session.get(TrainingRun, kept.run_id)
        assert run is not None and run.metrics["traffic_guard"]["languages"]["fr"] == french
        feedback = run.metrics["feedback_holdout"]
    for model in ("candidate", "champion"):
        assert set(feedback[model]["per_class"]) == {"negative", "neutral", "positive"}
        assert feedback[model]["per_language"]["en"]["n"] == feedback[model]["n"]
    # The traffic guard alone kept it: no other guard objects.
    assert kept.reason.count("more than the corrections asked") == 1
    assert "feedback holdout's rows in" not in kept.reason
    # With no base holdout, both were also judged on the general guard set shipped with
    # the model, on the serving runtime, per language.
    guard_rows = [json.loads(line) for line in GENERAL_GUARD.read_text().splitlines()]
    languages = Counter(row["language"] for row in guard_rows)
    general = kept.report["evaluation"]["general_guard"]
    for model in ("candidate", "champion"):
        assert general[model]["n"] == len(guard_rows)
        assert {code: f["n"] for code, f in general[model]["per_language"].items()} == languages
    assert "On the general guard set shipped with the model" in kept.reason
    assert "general guard set fr" not in kept.reason  # no language lost beyond its allowance
    # The dashboard's gauges show the run per class and per language...
    refresh_gauges(api_metrics, pipeline.sessions, timedelta(days=1))
    for model in ("candidate", "champion"):
        for label, figures in feedback[model]["per_class"].items():
            shown = gauge(api_metrics.training_last_recall, split="feedback_holdout", model=model,
                          label=label)  # fmt: skip
            assert shown == pytest.approx(figures["recall"])
    language_f1 = gauge(api_metrics.training_last_language_metric, split="feedback_holdout",
                        model="candidate", language="en", metric="macro_f1")  # fmt: skip
    assert language_f1 == pytest.approx(feedback["candidate"]["per_language"]["en"]["macro_f1"])
    changed = gauge(api_metrics.training_last_traffic, language="fr", share="changed")
    assert changed == pytest.approx(french["changed_share"])
    assert gauge(api_metrics.training_last_traffic, language="fr", share="corrected") == 0
    # ... and so do `sentiloop models runs` and `sentiloop models list`.
    monkeypatch.setenv("SENTILOOP_HOME", str(pipeline.settings.home))
    monkeypatch.setenv("SENTILOOP_MODEL_NAME", pipeline.settings.model_name)
    runner = CliRunner()
    [listed] = [
        json.loads(line)
        for line in runner.invoke(app, ["models", "runs", "--json"]).output.splitlines()
    ]
    assert listed["traffic_changed"]["languages"]["fr"] == french
    assert listed["general_guard"]["de"] == {
        model: general[model]["per_language"]["de"]["macro_f1"]
        for model in ("candidate", "champion")
    }
    recall = listed["recall"]["neutral"]
    assert recall["candidate"] == feedback["candidate"]["per_class"]["neutral"]["recall"]
    assert recall["champion"] == feedback["champion"]["per_class"]["neutral"]["recall"]
    table = runner.invoke(app, ["models", "runs"]).output
    assert f"fr={100 * french['changed_share']:.0f}%/0%" in table and "neutral=" in table
    assert f"pt={general['candidate']['per_language']['pt']['macro_f1']:.3f}/" in table
    models = [
        json.loads(line)
        for line in runner.invoke(app, ["models", "list", "--json"]).output.splitlines()
    ]
    [stored] = [row for row in models if row["tag"] == kept.candidate_tag]
    assert stored["split"] == "feedback_holdout"
    assert stored["language_macro_f1"]["en"]["champion"] == pytest.approx(
        feedback["champion"]["per_language"]["en"]["macro_f1"]
    )
    assert stored["recall"]["positive"]["candidate"] == pytest.approx(
        feedback["candidate"]["per_class"]["positive"]["recall"]
    )


def gauge(gauge_metric: Any, **labels: str) -> float:
    """The value of the one series of ``gauge_metric`` with ``labels``."""
    [value] = [
        sample.value
        for family in gauge_metric.collect()
        for sample in family.samples
        if all(sample.labels.get(name) == wanted for name, wanted in labels.items())
    ]
    return float(value)


# Chance on three balanced classes, and how unlikely under chance the candidate's
# holdout answers must be: a trainer that does not learn stays near 1/3.
CHANCE = 1 / 3
BEYOND_CHANCE = 1e-6
MORE_THINGS = [*THINGS, "courier", "hotline", "website", "parcel", "bill", "order", "manager",
               "checkout"]  # fmt: skip


def test_fine_tuning_learns_and_the_default_gate_promotes_it_then_keeps_the_champion(
    pipeline: TrainingPipeline, tmp_path: Path
) -> None:
    """Separable patterns, the gate's defaults: the candidate learns them (right on far
    more held-out rows than chance explains) and is promoted over the zero-shot
    champion; a candidate trained on the same texts with their labels shuffled is
    kept as challenger."""
    from statsmodels.stats.proportion import binom_test

    rows = [
        (f"{pattern.format(thing)} (ticket {n})", label)
        for label, patterns in PATTERNS.items()
        for pattern in patterns
        for thing in MORE_THINGS
        for n in range(3)
    ]

    def plan_on(labelled: list[tuple[str, str]], name: str) -> TrainingPlan:
        path = tmp_path / name
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerows([("text", "label"), *labelled])
        return TrainingPlan(
            base_data=DataSource(path),
            assembly=AssemblyConfig(holdout_fraction=0.25, validation_fraction=0.1),
            arguments=TrainingArguments(
                epochs=4,
                batch_size=16,
                max_length=32,
                lora_rank=None,
                learning_rate=1e-3,
                progress=False,
            ),
        )

    learnable = plan_on(rows, "separable.csv")
    assert learnable.gate == GateConfig()
    first = pipeline.run(learnable)
    holdout = first.report["evaluation"]["holdout"]["candidate"]
    right = sum(holdout["confusion_matrix"][i][i] for i in range(3))
    assert binom_test(right, holdout["n"], CHANCE, alternative="larger") < BEYOND_CHANCE, holdout
    assert first.decision == "promoted", first.reason
    assert first.report["gate"]["p_value"] <= GateConfig().significance
    assert champion(pipeline) == first.candidate_tag

    labels = [label for _, label in rows]
    random.Random(7).shuffle(labels)
    shuffled = [(text, label) for (text, _), label in zip(rows, labels, strict=True)]
    second = pipeline.run(plan_on(shuffled, "shuffled.csv"))
    assert second.decision == "challenger" and "kept the champion" in second.reason
    assert second.report["gate"]["p_value"] > GateConfig().significance, second.reason
    assert champion(pipeline) == first.candidate_tag
