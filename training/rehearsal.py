"""Rehearsal rows: what keeps a model retrained on one domain's feedback from
forgetting the rest (issue 20).

A team that retrains from the champion usually has no base data, only feedback
from its own traffic. Trained on that alone, the model drifts: general and
multilingual quality fell by 2 to 14 points macro-F1 and a class rare in the
feedback collapsed. So the retraining also sees texts the service logged without
feedback, each with the champion's probabilities as a soft target
(self-distillation, as in "Learning without Forgetting"): the candidate learns
the corrections while answering like the champion elsewhere. The texts are those
the service stored (redacted by default); no data leaves the deployment.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from model.classifiers import Classifier
from model.labels import LABELS
from model.templates import PromptTemplate
from model.text_keys import normalize_text


@dataclass(frozen=True)
class SoftExample:
    """A text with a target distribution over ``LABELS`` instead of a label."""

    text: str
    probabilities: tuple[float, ...]
    weight: float = 1.0


def rehearsal_count(training_rows: int, ratio: float, cap: int) -> int:
    """How many rehearsal rows a run with ``training_rows`` labelled rows gets."""
    return min(cap, round(training_rows * ratio))


def pick_texts(texts: Sequence[str], exclude: Collection[str], count: int, seed: int) -> list[str]:
    """Up to ``count`` distinct texts (by normalized key) of ``texts`` whose key is not in
    ``exclude`` (the labelled rows and holdouts: a text is never both a hard and a soft
    target, and the gate's rows stay unseen), sampled reproducibly; at most half of
    them, so that the gate's traffic guard, which compares answers on logged texts the
    candidate never trained on, always has the other half."""
    seen: dict[str, str] = {}
    for text in texts:
        key = normalize_text(text)
        if key and key not in exclude and key not in seen:
            seen[key] = text
    candidates = sorted(seen.items())
    random.Random(seed).shuffle(candidates)
    return [text for _, text in candidates[: min(count, len(candidates) // 2)]]


def soft_labelled(
    texts: Sequence[str], champion: Classifier, template: PromptTemplate, weight: float
) -> list[SoftExample]:
    """``texts`` with the champion's probabilities as it serves them (its runtime)."""
    scores = champion.predict([template.render(text) for text in texts], template)
    return [
        SoftExample(text, _normalized(tuple(row[label] for label in LABELS)), weight)
        for text, row in zip(texts, scores, strict=True)
    ]


def _normalized(probabilities: tuple[float, ...]) -> tuple[float, ...]:
    total = sum(probabilities) or 1.0
    return tuple(p / total for p in probabilities)
