"""Language identification of raw input texts (py3langid: langid.py's naive Bayes
model over byte n-grams, ~25 µs per text), among ``CANDIDATE_LANGUAGES``.

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
# py3langid's normalized probability of its first language below which a text is
# ``und``. ``python -m bench.language_id`` (XLM-T val, 324 tweets each): at 0.5, 16%
# of German and 10.5% of Spanish tweets were ``und`` (a plain Spanish review at 0.49
# among them); at 0.3, 10.8% and 3.7%, with wrong languages as rare (at most +0.6
# points) and no one-word reply or emoji given a language (among all of py3langid's
# languages; among the candidates, 8.3% and 2.2%).
MIN_CONFIDENCE = 0.3
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

# The ISO 639-1 codes (the 183 registered since June 2021; none of the installed
# libraries lists them all: py3langid detects 114 of them). A request's `language`
# must be one of these: an unknown code was stored as it came.
_ISO_639_1_TABLE = """
    aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu
    cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he
    hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko
    kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd
    ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se
    sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty
    ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
"""
ISO_639_1 = frozenset(_ISO_639_1_TABLE.split())


# The languages a text may be told in: those of XLM-R's pre-training corpus (the
# multilingual encoder's, Conneau et al. 2020, table 6) that py3langid knows: 90 of
# its 140. Among all 140, two words of English were Sesotho ("hello there": st 0.43)
# and short texts went to languages no model here reads; a text in one of the others
# is now ``und`` or a close relative (Zulu -> Xhosa, Faroese -> Icelandic), none of
# them a trained language. ``python -m bench.language_id`` (XLM-T val and short
# replies): und 10.8 -> 8.3% of German tweets, 3.7 -> 2.2% of Spanish, wrong
# languages no more frequent, 16 of 20 two-to-four-word replies right (12 before).
_CANDIDATE_TABLE = """
    af am ar as az be bg bn br bs ca cs cy da de el en eo es et eu fa fi fr fy ga gd gl
    gu ha he hi hr hu hy id is it ja jv ka kk km kn ko ku ky la lo lt lv mg mk ml mn mr
    ms my ne nl no om or pa pl ps pt ro ru sa sd si sk sl so sq sr su sv sw ta te th tl
    tr ug uk ur uz vi xh yi zh
"""
CANDIDATE_LANGUAGES = frozenset(_CANDIDATE_TABLE.split())


def identifier(candidates: Collection[str] | None = CANDIDATE_LANGUAGES) -> Any:
    """A new py3langid identifier (probabilities normalized) that tells only
    ``candidates`` (those it knows; None: every language of its model).

    Built from the candidates' columns of the model alone: py3langid's own
    ``set_languages`` keeps the whole model beside the copy it makes (a model
    process grew by 17 MiB, past issue 23's 400 MiB)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    loaded = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if candidates is None:
        return loaded
    keep = [i for i, code in enumerate(loaded.nb_classes) if code in candidates]
    return LanguageIdentifier(
        loaded.nb_ptc[:, keep],  # a copy: the whole model is freed with `loaded`
        loaded.nb_pc[keep],
        [loaded.nb_classes[i] for i in keep],
        loaded.tk_nextmove,
        loaded.tk_output,
        norm_probs=True,
        tk_row=loaded.tk_row,
    )


class LanguageDetector:
    """Thread-safe once loaded (the model loads on first use, ~1 s)."""

    def __init__(self) -> None:
        self._identifier: Any = None
        self._lock = threading.Lock()

    def identifier(self) -> Any:
        """py3langid's identifier of ``CANDIDATE_LANGUAGES``, loaded on first use."""
        if self._identifier is None:
            with self._lock:
                if self._identifier is None:
                    self._identifier = identifier()
        return self._identifier

    def detect(self, text: str) -> str:
        code, probability = self.identifier().classify(text)
        if probability < MIN_CONFIDENCE or len(code) != 2:
            return UNDETERMINED
        return str(code)

    def warm_up(self) -> None:
        self.identifier()


def metric_language(code: str) -> str:
    """The bounded metric label of a language code."""
    return code if code in METRIC_LANGUAGES or code == UNDETERMINED else OTHER


def is_supported(code: str, languages: Collection[str] | None) -> bool:
    """Whether a model trained on ``languages`` (None: not recorded, taken as any)
    is known to cover ``code``. An undetermined language is not supported: nothing
    says the model was trained on a text whose language cannot be told, so callers
    get the same caution (and the same unsupported counter) as for a language
    outside the model's."""
    return code != UNDETERMINED and (not languages or code in languages)
