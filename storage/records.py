"""Plain records that cross the store's boundary (no ORM objects leak out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Verdict = Literal["correct", "incorrect"]


@dataclass(frozen=True)
class PredictionRecord:
    id: str
    created_at: datetime
    text: str | None
    text_storage: str
    text_sha256: str
    label: str
    scores: dict[str, float]
    model_version: str
    template_version: str
    latency_ms: float
    routing_key_sha256: str | None = None
    language: str | None = None  # ISO 639-1 code, "und" when undetermined
    external_id: str | None = None  # the caller's id of the text (ticket, review, chat)
    external_source: str | None = None  # the caller's system (a CRM)

    @property
    def confidence(self) -> float:
        return max(self.scores.values())


@dataclass(frozen=True)
class FeedbackInput:
    """Feedback on one prediction, named by ``prediction_id`` or by the caller's
    ``external_id`` (with ``source``, the system that scored it, when several did)."""

    prediction_id: str | None = None
    label: str | None = None
    verdict: Verdict | None = None
    comment: str | None = None
    source: str | None = None
    idempotency_key: str | None = None
    external_id: str | None = None

    def __post_init__(self) -> None:
        if (self.label is None) == (self.verdict is None):
            raise ValueError("feedback needs exactly one of label or verdict")
        if (self.prediction_id is None) == (self.external_id is None):
            raise ValueError("feedback needs exactly one of prediction_id or external_id")


@dataclass(frozen=True)
class FeedbackResult:
    feedback_id: str
    prediction_id: str
    created_at: datetime
    kind: str
    predicted_label: str
    effective_label: str | None
    agrees: bool
    model_version: str
    template_version: str
    replayed: bool = field(default=False)
    # Set when the feedback named an external id: which id, and how many predictions
    # carried it before the feedback (the latest of them was judged).
    external_id: str | None = None
    predictions_with_external_id: int | None = None
