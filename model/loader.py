"""The one loader: builds the classifier that serves a model, for serving and for
training's evaluation alike, so that a figure measured is a figure served.

* no tag: the zero-shot model on the base encoder;
* ``shipped:<name>@<sha>``: the shipped default model (``model.shipped``),
  merged onto its base in the machine's cache;
* a tag in the model store (or a model directory not stored yet, such as a
  training candidate): the fine-tuned model.

Fine-tuned models run on the runtime the settings choose (ONNX Runtime int8 on
CPUs, torch elsewhere) at the serving max length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.settings import Settings
from model import model_store
from model.base_models import base_model_dir
from model.classifiers import Classifier, FineTunedClassifier, ZeroShotClassifier
from model.onnx_runtime import onnx_model_file
from model.shipped import (
    VERSION_PREFIX,
    ShippedModel,
    materialize,
    shipped_by_version,
    shipped_for_base,
)

SHIPPED_MODELS = "the shipped models of this installation"


def cold_start_tag(settings: Settings) -> str | None:
    """What serves as champion while none is promoted: the shipped model of the base
    preset, or None (the zero-shot model)."""
    if settings.cold_start_model != "shipped":
        return None
    shipped = shipped_for_base(settings.base_model)
    return None if shipped is None else shipped.version


def zero_shot(settings: Settings) -> Classifier:
    return ZeroShotClassifier(
        base_model_dir(settings), device=settings.device, max_length=settings.max_length
    )


def fine_tuned(
    settings: Settings, directory: Path, *, version: str, onnx_cache_dir: Path
) -> Classifier:
    """The model in ``directory`` as it serves; an ONNX export goes to ``onnx_cache_dir``."""
    return FineTunedClassifier(
        directory,
        version=version,
        device=settings.device,
        max_length=settings.max_length,
        quantize=settings.resolved_quantize,
        backend=settings.resolved_inference_backend,
        onnx_cache_dir=onnx_cache_dir,
        threads=settings.resolved_inference_threads,
    )


def shipped_classifier(settings: Settings, shipped: ShippedModel) -> Classifier:
    """A shipped model as it serves. The merged directory is content-addressed, so
    its export is shared machine-wide."""
    directory = materialize(shipped, settings.cache_dir)
    return fine_tuned(settings, directory, version=shipped.version, onnx_cache_dir=directory)


def _shipped(tag: str) -> ShippedModel:
    shipped = shipped_by_version(tag)
    if shipped is None:
        raise model_store.ModelNotFound(tag, SHIPPED_MODELS)
    return shipped


def model_directory(settings: Settings, tag: str) -> Path:
    """The Hugging Face directory of a shipped or stored model."""
    if tag.startswith(VERSION_PREFIX):
        return materialize(_shipped(tag), settings.cache_dir)
    return model_store.get_model(tag).path


def prepare(settings: Settings) -> Path | None:
    """Build what the cold-start model needs on this machine before serving: the base
    encoder (converted once), the shipped model merged onto it and its export to the
    serving runtime. Serving does the same on first use; this does it up front (in a
    container image, or before `bentoml serve` starts its workers). Returns the
    serving file (None: nothing to export)."""
    base_model_dir(settings)
    tag = cold_start_tag(settings)
    if tag is None or settings.resolved_inference_backend != "onnx":
        return None
    directory = model_directory(settings, tag)
    return onnx_model_file(directory, directory, quantize=settings.resolved_quantize)


def load_classifier(settings: Settings, tag: str | None) -> tuple[Classifier, dict[str, Any]]:
    """The classifier serving ``tag`` (None: zero-shot), and its metadata."""
    if tag is None:
        # The verbalizer sentences the zero-shot model compares with are English.
        return zero_shot(settings), {"base_model": settings.base_model, "languages": ["en"]}
    if tag.startswith(VERSION_PREFIX):
        shipped = _shipped(tag)
        return shipped_classifier(settings, shipped), shipped.metadata()
    stored = model_store.get_model(tag)
    cache = settings.onnx_cache_dir / stored.tag.replace(":", "-")
    classifier = fine_tuned(settings, stored.path, version=stored.tag, onnx_cache_dir=cache)
    return classifier, dict(stored.metadata)
