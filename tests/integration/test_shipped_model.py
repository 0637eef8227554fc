"""The shipped default model: small enough for git, described by its card, loaded
by the one loader on the serving runtime, and measured exactly as it serves."""

from __future__ import annotations

import random

import pytest

from core.settings import Settings
from model.loader import cold_start_tag, load_classifier
from model.shipped import ARTIFACT_FILES, shipped_for_base
from model.templates import TemplateRegistry
from tests.support import SHARED_DATA
from training.default_model import LANGUAGES, evaluation_sets, measure_shipped
from training.evaluate import evaluate

pytestmark = pytest.mark.slow


def settings() -> Settings:
    return Settings(base_model="multilingual-e5-small")


def test_the_artifact_is_small_and_its_card_complete() -> None:
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    size = sum((shipped.directory / name).stat().st_size for name in ARTIFACT_FILES)
    assert size <= 10_000_000
    card = shipped.card
    assert card["languages"] == list(LANGUAGES)
    assert card["metrics"]["serving_runtime"] == "onnx-int8"
    for runtime in ("serving", "torch_fp32"):
        for name in ("tweet_test", "sst2_dev_binary", *(f"xlmt_val_{x}" for x in LANGUAGES)):
            figures = card["metrics"][runtime][name]
            assert figures["n"] > 0 and 0 < figures["macro_f1"] <= 1, (runtime, name)
    text = (shipped.directory / "MODEL_CARD.md").read_text()
    assert "licence caveats" in text and "python -m training.default_model" in text
    assert shipped.temperature > 0


def test_the_cold_start_champion_is_the_shipped_model_on_the_serving_runtime() -> None:
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    assert cold_start_tag(settings()) == shipped.version
    assert cold_start_tag(Settings(base_model="multilingual-e5-small",
                                   cold_start_model="zero-shot")) is None  # fmt: skip
    assert cold_start_tag(Settings(base_model="all-minilm-l6-v2")) is None
    classifier, metadata = load_classifier(settings(), shipped.version)
    assert classifier.runtime == "onnx-int8" and classifier.version == shipped.version
    assert metadata["metrics"] == shipped.card["metrics"]


def test_the_card_figures_are_what_the_loader_serves() -> None:
    """The build measures through the loader: the same rows scored by the classifier
    serving loads give the same figures."""
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    measured = measure_shipped(shipped, SHARED_DATA, settings(), limit=40)
    served, _ = load_classifier(settings(), shipped.version)
    assert measured["serving_runtime"] == served.runtime

    template = TemplateRegistry.load(settings().resolved_templates_dir).get("v1")
    for name, (rows, labels) in evaluation_sets(SHARED_DATA, 40).items():
        scores = served.predict([template.render(e.text) for e in rows], template)
        metrics = evaluate([e.label for e in rows], scores, labels=labels)
        assert round(metrics["macro_f1"], 4) == measured["serving"][name]["macro_f1"], name


# The stated tolerance of the confidence-based accuracy estimate (README, Monitoring).
ESTIMATE_TOLERANCE = 0.05


def test_mean_confidence_estimates_accuracy_on_held_out_sets() -> None:
    """The estimate behind sentiloop_estimated_accuracy: the mean calibrated confidence
    of served predictions, against realized accuracy on held-out sets."""
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    served, _ = load_classifier(settings(), shipped.version)
    template = TemplateRegistry.load(settings().resolved_templates_dir).get("v1")
    sets = evaluation_sets(SHARED_DATA)
    held_out = {
        "tweet_test": random.Random(3).sample(sets["tweet_test"][0], 600),
        "xlmt_val": [e for language in LANGUAGES for e in sets[f"xlmt_val_{language}"][0]],
    }
    for name, rows in held_out.items():
        scores = served.predict([template.render(e.text) for e in rows], template)
        estimate = sum(max(s.values()) for s in scores) / len(scores)
        accuracy = evaluate([e.label for e in rows], scores)["accuracy"]
        assert abs(estimate - accuracy) <= ESTIMATE_TOLERANCE, (name, estimate, accuracy)
