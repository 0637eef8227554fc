"""Scores raw texts with the model and template an item names.

Model references: ``champion`` (the configured ``model_tag``, else the newest
model of ``model_name`` in the BentoML store, else the zero-shot model),
``zero-shot``, or a BentoML model tag.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from sentiloop.settings import CHAMPION, ZERO_SHOT, Settings
from service import model_store
from service.classifiers import Classifier, FineTunedClassifier, Scores, ZeroShotClassifier
from service.templates import TemplateRegistry

logger = logging.getLogger(__name__)


class ScoreItem(BaseModel):
    """One raw text to score; it crosses from the API service to the model service."""

    text: str
    template_version: str
    model: str = CHAMPION


class ScoreResult(BaseModel):
    scores: Scores
    model_version: str


@dataclass(frozen=True)
class LoadedModel:
    reference: str
    classifier: Classifier
    metadata: dict[str, Any]


class ScoringEngine:
    def __init__(self, settings: Settings, registry: TemplateRegistry) -> None:
        self._settings = settings
        self._registry = registry
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    @property
    def registry(self) -> TemplateRegistry:
        return self._registry

    def _load_zero_shot(self) -> LoadedModel:
        classifier = ZeroShotClassifier(
            self._settings.resolved_base_model,
            device=self._settings.device,
            max_length=self._settings.max_length,
        )
        return LoadedModel(
            ZERO_SHOT, classifier, {"base_model": str(self._settings.resolved_base_model)}
        )

    def _load_tag(self, reference: str, tag: str) -> LoadedModel:
        stored = model_store.get_model(tag)
        classifier = FineTunedClassifier(
            stored.path,
            version=stored.tag,
            device=self._settings.device,
            max_length=self._settings.max_length,
        )
        return LoadedModel(reference, classifier, dict(stored.metadata))

    def _load(self, reference: str) -> LoadedModel:
        if reference == ZERO_SHOT:
            return self._load_zero_shot()
        if reference == CHAMPION:
            tag = self._settings.model_tag
            if tag is None:
                latest = model_store.latest_model(self._settings.model_name)
                tag = latest.tag if latest is not None else None
            if tag is None:
                logger.info("no fine-tuned model in the store: champion is the zero-shot model")
                loaded = self._load_zero_shot()
                return LoadedModel(CHAMPION, loaded.classifier, loaded.metadata)
            return self._load_tag(CHAMPION, tag)
        return self._load_tag(reference, reference)

    def load(self, references: Iterable[str]) -> None:
        """Load every referenced model now (start-up), so that requests never wait on it."""
        for reference in sorted(set(references)):
            self.model(reference)

    def model(self, reference: str) -> LoadedModel:
        with self._lock:
            loaded = self._models.get(reference)
            if loaded is None:
                loaded = self._load(reference)
                self._models[reference] = loaded
                logger.info("model %s serves as %r", loaded.classifier.version, reference)
            return loaded

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            groups[(item.model, item.template_version)].append(index)
        results: list[ScoreResult | None] = [None] * len(items)
        for (reference, version), indices in groups.items():
            template = self._registry.get(version)
            classifier = self.model(reference).classifier
            rendered = [template.render(items[index].text) for index in indices]
            for index, scores in zip(indices, classifier.predict(rendered, template), strict=True):
                results[index] = ScoreResult(scores=scores, model_version=classifier.version)
        return [result for result in results if result is not None]

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            loaded = list(self._models.values())
        return [
            {
                "reference": model.reference,
                "model_version": model.classifier.version,
                "kind": model.classifier.kind,
                "metadata": model.metadata,
            }
            for model in loaded
        ]
