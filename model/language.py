"""Language identification of raw input texts (py3langid: langid.py's naive Bayes
model over byte n-grams, 97 languages, ~25 µs per text).

Codes are ISO 639-1. A text too short or ambiguous to tell (the identifier's
normalized probability below ``MIN_CONFIDENCE``, or no linguistic content such
as a bare number) is ``und`` (BCP 47 "undetermined"). Metrics label the common
languages by code and the rest ``other``, so the label set stays bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any

UNDETERMINED = "und"
MIN_CONFIDENCE = 0.5
# Metric label values besides "other" and "und" (the languages most CRM traffic is in).
METRIC_LANGUAGES = frozenset(
    {
        "en",
        "es",
        "pt",
        "fr",
        "de",
        "it",
        "nl",
        "pl",
        "ru",
        "uk",
        "tr",
        "ar",
        "he",
        "fa",
        "hi",
        "bn",
        "id",
        "vi",
        "th",
        "ja",
        "zh",
        "ko",
        "sv",
        "da",
        "no",
        "fi",
        "cs",
        "el",
        "ro",
        "hu",
    }
)
OTHER = "other"


class LanguageDetector:
    """Thread-safe once loaded (the model loads on first use, ~1 s)."""

    def __init__(self) -> None:
        self._identifier: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        if self._identifier is None:
            with self._lock:
                if self._identifier is None:
                    from py3langid.langid import MODEL_FILE, LanguageIdentifier

                    self._identifier = LanguageIdentifier.from_model_file(
                        MODEL_FILE, norm_probs=True
                    )
        return self._identifier

    def detect(self, text: str) -> str:
        code, probability = self._loaded().classify(text)
        if probability < MIN_CONFIDENCE or len(code) != 2:
            return UNDETERMINED
        return str(code)

    def warm_up(self) -> None:
        self._loaded()


def metric_language(code: str) -> str:
    """The bounded metric label of a language code."""
    return code if code in METRIC_LANGUAGES or code == UNDETERMINED else OTHER


def is_supported(code: str, languages: Collection[str] | None) -> bool:
    """Whether a model trained on ``languages`` (None: not recorded) covers ``code``;
    an undetermined language is not flagged."""
    return code == UNDETERMINED or not languages or code in languages
