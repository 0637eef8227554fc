"""The one loader: builds the classifier that serves a model, for serving and for
training's evaluation alike, so that a figure measured is a figure served.

* no tag: the zero-shot model on the base encoder;
* a tag in the model store (or a model directory not stored yet, such as a
  training candidate): the fine-tuned model on the runtime the settings choose
  (ONNX Runtime int8 on CPUs, torch elsewhere) at the serving max length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.settings import Settings
from model import model_store
from model.classifiers import Classifier, FineTunedClassifier, ZeroShotClassifier


def zero_shot(settings: Settings) -> Classifier:
    return ZeroShotClassifier(
        settings.resolved_base_model, device=settings.device, max_length=settings.max_length
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


def load_classifier(settings: Settings, tag: str | None) -> tuple[Classifier, dict[str, Any]]:
    """The classifier serving ``tag`` (None: zero-shot), and its store metadata."""
    if tag is None:
        return zero_shot(settings), {"base_model": str(settings.resolved_base_model)}
    stored = model_store.get_model(tag)
    cache = settings.onnx_cache_dir / stored.tag.replace(":", "-")
    classifier = fine_tuned(settings, stored.path, version=stored.tag, onnx_cache_dir=cache)
    return classifier, dict(stored.metadata)
