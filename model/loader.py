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
from model import corrections, deltas, model_store, shared_store
from model.base_models import base_model_dir
from model.classifiers import Classifier, FineTunedClassifier, ZeroShotClassifier
from model.onnx_runtime import onnx_model_file
from model.shipped import (
    VERSION_PREFIX,
    ShippedModel,
    materialize,
    shipped_by_version,
    shipped_for_base,
    shipped_models,
)
from model.tokenization import unigram_file

SHIPPED_MODELS = "the shipped models of this installation"
# What a user types for the shipped model (promote, rollback).
SHIPPED = "shipped"


def cold_start_tag(settings: Settings) -> str | None:
    """What serves as champion while none is promoted: the shipped model of the base
    preset, or None (the zero-shot model)."""
    if settings.cold_start_model != "shipped":
        return None
    shipped = shipped_for_base(settings.base_model)
    return None if shipped is None else shipped.version


def zero_shot(settings: Settings) -> Classifier:
    return ZeroShotClassifier(
        base_model_dir(settings),
        device=settings.device,
        max_length=settings.max_length,
        threads=settings.resolved_inference_threads,
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
        alone_threads=settings.resolved_alone_threads,
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


def resolve_tag(settings: Settings, reference: str) -> str:
    """The tag that serves ``reference``: ``shipped`` (the shipped model of the base
    preset, else the only one installed), a shipped version as the API reports it
    (``shipped:<name>@<sha>``), or a model in the store. The shipped model is a model
    like any other for promotion and rollback, and a tag the server could not load
    fails here, naming where it looked, not later in a server log."""
    if reference == SHIPPED:
        shipped = shipped_for_base(settings.base_model)
        installed = shipped_models()
        if shipped is None and len(installed) == 1:
            shipped = installed[0]
        if shipped is None:
            where = f"{SHIPPED_MODELS} for the base model {settings.base_model!r}"
            raise model_store.ModelNotFound(reference, where)
        return shipped.version
    if reference.startswith(VERSION_PREFIX):
        return _shipped(reference).version
    return stored_model(settings, reference).tag


def stored_model(settings: Settings, tag: str) -> model_store.StoredModel:
    """A model of the local store; one it lacks is fetched from the shared store
    (``model.shared_store``) when one is configured: a replica on another machine
    than the trainer's."""
    try:
        return model_store.get_model(tag)
    except model_store.ModelNotFound:
        if settings.model_store_url is None:
            raise
    return shared_store.fetch(settings, tag)


def model_directory(settings: Settings, tag: str) -> Path:
    """The Hugging Face directory of a shipped or stored model."""
    if tag.startswith(VERSION_PREFIX):
        return materialize(_shipped(tag), settings.cache_dir)
    return stored_model_directory(settings, stored_model(settings, tag))


def stored_model_directory(settings: Settings, stored: model_store.StoredModel) -> Path:
    """A stored model's directory: itself; for a delta (``model.deltas``) the delta
    merged onto its parent's directory; for a correction (``model.corrections``) the
    parent's directory with the correction beside it (parents resolved the same way,
    so chains work)."""
    if corrections.is_correction(stored.path):
        parent = model_directory(settings, corrections.parent_of(stored.path))
        return corrections.materialize_correction(stored.path, parent, settings.cache_dir)
    if not deltas.is_delta(stored.path):
        return stored.path
    parent = model_directory(settings, deltas.parent_of(stored.path))
    return deltas.materialize_delta(stored.path, parent, settings.cache_dir)


def prepare(settings: Settings) -> Path | None:
    """Build what the cold-start model needs on this machine before serving: the base
    encoder (converted once), the shipped model merged onto it and its export to the
    serving runtime. Serving does the same on first use; this does it up front (in a
    container image, or before `bentoml serve` starts its workers). Returns the
    serving file (None: nothing to export)."""
    base_model_dir(settings, checksums=True)
    tag = cold_start_tag(settings)
    if tag is None:
        return None
    # Every byte of the cache is checked here (a corrupt entry is rebuilt), once
    # before serving rather than at each model process's start.
    directory = materialize(_shipped(tag), settings.cache_dir, checksums=True)
    if settings.resolved_inference_backend != "onnx":
        return None
    serving_file = onnx_model_file(
        directory, directory, quantize=settings.resolved_quantize, checksums=True
    )
    unigram_file(directory, directory, checksums=True)  # the tokenizer it serves with
    return serving_file


def prepare_model(settings: Settings, tag: str) -> None:
    """Build what serving ``tag`` needs on this machine (a delta merged onto its parent,
    the export to the serving runtime) before it gets a role. A model process that
    found them missing built them itself while its batches waited: past the batch
    deadline it was restarted, and a first promotion took 80 s to serve."""
    load_classifier(settings, tag)


def load_classifier(settings: Settings, tag: str | None) -> tuple[Classifier, dict[str, Any]]:
    """The classifier serving ``tag`` (None: zero-shot), and its metadata."""
    if tag is None:
        # The verbalizer sentences the zero-shot model compares with are English.
        return zero_shot(settings), {"base_model": settings.base_model, "languages": ["en"]}
    if tag.startswith(VERSION_PREFIX):
        shipped = _shipped(tag)
        return shipped_classifier(settings, shipped), shipped.metadata()
    stored = stored_model(settings, tag)
    cache = settings.onnx_cache_dir / stored.tag.replace(":", "-")
    directory = stored_model_directory(settings, stored)
    classifier = fine_tuned(settings, directory, version=stored.tag, onnx_cache_dir=cache)
    return classifier, dict(stored.metadata)
