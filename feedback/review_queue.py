"""The review queue (active learning): logged predictions that most need a human
label. Uncertain first (the smallest margin between the two likeliest labels,
entropy breaking ties), diverse (no two texts that are near-duplicates: the same
words once numbers, case and punctuation are set aside, or a word-set Jaccard
similarity of ``DUPLICATE_JACCARD`` or more), not labelled yet (nor its exact text
under another prediction), text stored.

A share of the queue (``exploration``) is drawn at random from the other
unlabelled predictions: uncertainty never picks what the model is confidently
wrong about (a new domain, a word that flipped meaning), and on the SST-2
flywheel pure uncertainty sampling lost to random picks for exactly that reason
(``bench/results/flywheel-queue.json``). Each item says why it was chosen.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from storage.models import Prediction
from storage.stats import least_confident_unjudged, random_unjudged
from storage.store import as_utc

DUPLICATE_JACCARD = 0.8
# The share of the queue drawn at random (exploration beside uncertainty).
DEFAULT_EXPLORATION = 0.2
# Candidates read per item asked for: the least confident are margin-sorted, then
# near-duplicates dropped.
POOL_FACTOR = 10
MAX_POOL = 20_000
_WORD = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class ReviewItem:
    prediction_id: str
    created_at: datetime
    text: str
    text_storage: str
    predicted_label: str
    scores: dict[str, float]
    confidence: float
    margin: float
    entropy: float
    model_version: str
    template_version: str
    language: str | None
    external_id: str | None
    source: str | None
    chosen_for: str  # "uncertainty" or "exploration"

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["created_at"] = self.created_at.isoformat()
        return body


def margin(scores: dict[str, float]) -> float:
    top = sorted(scores.values(), reverse=True)
    return top[0] - (top[1] if len(top) > 1 else 0.0)


def entropy(scores: dict[str, float]) -> float:
    return -sum(p * math.log(p) for p in scores.values() if p > 0)


def _words(text: str) -> frozenset[str]:
    return frozenset(word.lower() for word in _WORD.findall(text))


def _near_duplicate(words: frozenset[str], chosen: list[frozenset[str]]) -> bool:
    for other in chosen:
        union = len(words | other)
        if union == 0 or len(words & other) / union >= DUPLICATE_JACCARD:
            return True
    return False


def _item(prediction: Prediction, chosen_for: str) -> ReviewItem:
    assert prediction.text is not None  # the queries ask for stored texts
    return ReviewItem(
        prediction_id=prediction.id,
        created_at=as_utc(prediction.created_at),
        text=prediction.text,
        text_storage=prediction.text_storage,
        predicted_label=prediction.label,
        scores=dict(prediction.scores),
        confidence=prediction.confidence,
        margin=round(margin(prediction.scores), 6),
        entropy=round(entropy(prediction.scores), 6),
        model_version=prediction.model_version,
        template_version=prediction.template_version,
        language=prediction.language,
        external_id=prediction.external_id,
        source=prediction.external_source,
        chosen_for=chosen_for,
    )


def review_queue(
    *,
    session: Session,
    since: datetime,
    limit: int,
    model_version: str | None = None,
    language: str | None = None,
    exploration: float = DEFAULT_EXPLORATION,
    seed: int | None = None,
) -> list[ReviewItem]:
    """Up to ``limit`` predictions to label: the most uncertain first, then
    ``exploration`` of ``limit`` drawn at random (``seed`` for a repeatable draw)."""
    if not 0 <= exploration <= 1:
        raise ValueError(f"exploration must be in [0, 1], got {exploration}")
    explore = round(limit * exploration)
    chosen: list[ReviewItem] = []
    seen: list[frozenset[str]] = []

    def take(candidates: list[Prediction], upto: int, chosen_for: str) -> None:
        picked = {item.prediction_id for item in chosen}
        for prediction in candidates:
            if len(chosen) == upto:
                return
            assert prediction.text is not None
            words = _words(prediction.text)
            if prediction.id in picked or _near_duplicate(words, seen):
                continue
            seen.append(words)
            chosen.append(_item(prediction, chosen_for))

    # The pool grows while near-duplicates leave it short (traffic of one template,
    # "order 17 late", "order 18 late", is one text to a labeller).
    size = (limit - explore) * POOL_FACTOR
    while True:
        pool = least_confident_unjudged(
            session=session,
            since=since,
            limit=min(MAX_POOL, size),
            model_version=model_version,
            language=language,
        )
        pool.sort(key=lambda p: (margin(p.scores), -entropy(p.scores), p.id))
        chosen.clear()
        seen.clear()
        take(pool, limit - explore, "uncertainty")
        if len(chosen) == limit - explore or len(pool) < size or size >= MAX_POOL:
            break
        size *= 4
    # The random draw grows the same way: ten random picks of busy traffic can all be
    # near-duplicates of what is already chosen.
    uncertain, uncertain_words = len(chosen), len(seen)
    size = explore * POOL_FACTOR
    while explore:
        sample = random_unjudged(
            session=session,
            since=since,
            limit=min(MAX_POOL, size),
            model_version=model_version,
            language=language,
        )
        random.Random(seed).shuffle(sample)
        del chosen[uncertain:], seen[uncertain_words:]
        take(sample, limit, "exploration")
        if len(chosen) == limit or len(sample) < size or size >= MAX_POOL:
            break
        size *= 4
    return chosen
