"""Scores raw texts with the model and template an item names; swaps models live.

Model references: ``champion`` (the pinned ``model_tag``, else the champion
recorded in the database, else the cold-start model: the shipped model of the
base preset, or the zero-shot model), ``challenger`` (the
recorded challenger, else the champion), ``zero-shot``, or a BentoML model tag.

``refresh()`` re-resolves ``champion``/``challenger``; a changed tag is loaded
off to the side and swapped in under a lock, so requests in flight finish on the
model they started with and no request waits for a load. A model that fails to
load leaves the previous one serving, and the reason is reported.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.settings import CHALLENGER, CHAMPION, ZERO_SHOT, Settings
from model.classifiers import Classifier, Scores
from model.language import UNDETERMINED, LanguageDetector, is_supported
from model.loader import cold_start_tag, load_classifier
from model.templates import TemplateRegistry

logger = logging.getLogger(__name__)

# Reads the model tag currently holding a role ("champion"/"challenger") or None.
AssignmentSource = Callable[[str], str | None]


class ScorerObserver(Protocol):
    def model_serving(
        self, reference: str, version: str, kind: str, metadata: Mapping[str, Any]
    ) -> None: ...

    def load_failed(self) -> None: ...


class _NoObserver:
    def model_serving(
        self, reference: str, version: str, kind: str, metadata: Mapping[str, Any]
    ) -> None:
        pass

    def load_failed(self) -> None:
        pass


ROLES = (CHAMPION, CHALLENGER)


class ModelUnavailable(RuntimeError):
    """No model could score the texts now (a model process died, hung or is
    restarting); the caller may retry shortly (503 with Retry-After)."""


@dataclass(frozen=True, slots=True)
class ScoreItem:
    """One raw text to score with a template version and a model reference."""

    text: str
    template_version: str
    model: str = CHAMPION
    language: str | None = None  # ISO 639-1 given by the caller; None: detect it


@dataclass(frozen=True, slots=True)
class ScoreResult:
    scores: Scores
    model_version: str
    language: str = UNDETERMINED
    language_supported: bool = True


@dataclass(frozen=True)
class LoadedModel:
    reference: str
    tag: str | None  # None for the zero-shot model
    classifier: Classifier
    metadata: dict[str, Any]


def no_assignments(role: str) -> str | None:
    return None


class Scorer:
    def __init__(
        self,
        settings: Settings,
        registry: TemplateRegistry,
        assignments: AssignmentSource = no_assignments,
        observer: ScorerObserver | None = None,
    ) -> None:
        self._settings = settings
        self._observer: ScorerObserver = observer or _NoObserver()
        self._registry = registry
        self._assignments = assignments
        self._cold_start = cold_start_tag(settings)
        # Languages are told here, beside the model (in the model processes on CPUs),
        # not on the API worker's event loop: ~25 µs a text, in parallel over cores.
        self._languages = LanguageDetector()
        self._models: dict[str, LoadedModel] = {}
        self._by_tag: dict[str | None, LoadedModel] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.last_refresh_error: str | None = None

    def target_tag(self, reference: str) -> str | None:
        """The stored model tag ``reference`` should serve now (None: zero-shot)."""
        if reference == ZERO_SHOT:
            return None
        if reference == CHAMPION:
            if self._settings.model_tag is not None:
                return self._settings.model_tag
            return self._assignments(CHAMPION) or self._cold_start
        if reference == CHALLENGER:
            return self._assignments(CHALLENGER) or self.target_tag(CHAMPION)
        return reference

    def _build(self, reference: str, tag: str | None) -> LoadedModel:
        with self._lock:
            cached = self._by_tag.get(tag)
        if cached is not None:
            return LoadedModel(reference, tag, cached.classifier, cached.metadata)
        classifier, metadata = load_classifier(self._settings, tag)
        stored_tag = None if tag is None else classifier.version
        return LoadedModel(reference, stored_tag, classifier, metadata)

    def _install(self, loaded: LoadedModel) -> None:
        with self._lock:
            self._models[loaded.reference] = loaded
            self._by_tag[loaded.tag] = loaded
            in_use = {model.tag for model in self._models.values()}
            for tag in [tag for tag in self._by_tag if tag not in in_use]:
                del self._by_tag[tag]
        logger.info("model %s serves as %r", loaded.classifier.version, loaded.reference)
        self._observer.model_serving(
            loaded.reference, loaded.classifier.version, loaded.classifier.kind, loaded.metadata
        )

    def load(self, references: Iterable[str]) -> None:
        """Load every referenced model now (start-up), so that requests never wait on it."""
        self._languages.warm_up()
        for reference in sorted(set(references)):
            self.model(reference)

    def model(self, reference: str) -> LoadedModel:
        with self._lock:
            loaded = self._models.get(reference)
        if loaded is None:
            with self._refresh_lock:
                with self._lock:
                    loaded = self._models.get(reference)
                if loaded is None:
                    loaded = self._build(reference, self.target_tag(reference))
                    self._install(loaded)
        return loaded

    def refresh(self) -> list[str]:
        """Swap in models whose role changed; returns what changed. Keeps serving on errors."""
        changes = []
        with self._refresh_lock:
            with self._lock:
                current = {ref: m for ref, m in self._models.items() if ref in ROLES}
            errors = []
            for reference, loaded in current.items():
                try:
                    tag = self.target_tag(reference)
                    if tag == loaded.tag:
                        continue
                    replacement = self._build(reference, tag)
                except Exception as exc:
                    self._observer.load_failed()
                    errors.append(f"{reference}: {type(exc).__name__}: {exc}")
                    logger.error(
                        "keeping %s as %r: cannot switch: %s",
                        loaded.classifier.version,
                        reference,
                        exc,
                    )
                    continue
                self._install(replacement)
                changes.append(
                    f"{reference}: {loaded.classifier.version} -> {replacement.classifier.version}"
                )
            self.last_refresh_error = "; ".join(errors) or None
        return changes

    def score(self, items: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        """Scores of ``items``; ``alone``: no other batch is in flight, the model call
        may use every core (``Classifier.predict``)."""
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            groups[(item.model, item.template_version)].append(index)
        results: list[ScoreResult | None] = [None] * len(items)
        for (reference, version), indices in groups.items():
            template = self._registry.get(version)
            loaded = self.model(reference)
            classifier = loaded.classifier
            languages = loaded.metadata.get("languages")
            rendered = [template.render(items[index].text) for index in indices]
            predicted = classifier.predict(rendered, template, alone=alone)
            for index, scores in zip(indices, predicted, strict=True):
                item = items[index]
                language = item.language or self._languages.detect(item.text)
                results[index] = ScoreResult(
                    scores=scores,
                    model_version=classifier.version,
                    language=language,
                    language_supported=is_supported(language, languages),
                )
        return [result for result in results if result is not None]

    def describe(self) -> dict[str, Any]:
        with self._lock:
            loaded = list(self._models.values())
        return {
            "models": [
                {
                    "reference": model.reference,
                    "model_version": model.classifier.version,
                    "kind": model.classifier.kind,
                    "runtime": model.classifier.runtime,
                    "metadata": model.metadata,
                }
                for model in sorted(loaded, key=lambda m: m.reference)
            ],
            "last_refresh_error": self.last_refresh_error,
        }
