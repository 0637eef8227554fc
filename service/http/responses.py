"""The API's response bodies and request limits, importable without the server.

The service answers with these models and the client (``sentiloop.client``) reads
its answers with them, so that the two cannot drift apart. This module imports
pydantic and the label set only: ``service.http.schemas`` (the request bodies) pulls
in the store and SQLAlchemy with them (half a second), and a client imports in a
fraction of that without torch, BentoML or SQLAlchemy
(``tests/unit/test_client.py`` checks it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from model.labels import Label

MAX_TEXTS_PER_REQUEST = 256
MAX_CHARS_PER_TEXT = 5_000
MAX_FEEDBACK_BATCH = 1_000
MAX_REVIEW_ITEMS = 500


class Prediction(BaseModel):
    prediction_id: str
    label: Label
    scores: dict[Label, float]
    confidence: float
    model_version: str
    template_version: str
    language: str = Field(
        description="ISO 639-1 code of the text's language (given or detected); "
        '"und" when it cannot be told (too short, no words).'
    )
    language_supported: bool = Field(
        description="Whether the model is known to be trained on this language; false: "
        'answered by the multilingual encoder alone, expect lower quality ("und" is '
        "always false: a language that cannot be told is not supported)."
    )
    latency_ms: float
    external_id: str | None = Field(
        default=None,
        description="The external_id sent with this text (batch callers match by it), "
        "null when none was sent.",
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class FeedbackResponse(BaseModel):
    feedback_id: str
    prediction_id: str
    created_at: datetime
    kind: Literal["label", "verdict"]
    predicted_label: Label
    effective_label: Label | None
    agrees: bool
    model_version: str
    template_version: str
    replayed: bool
    external_id: str | None = Field(
        default=None, description="The external_id the feedback named, if it named one."
    )
    predictions_with_external_id: int | None = Field(
        default=None,
        description="How many predictions carried that external_id before the feedback "
        "(the latest was judged).",
    )


class FeedbackItemResult(BaseModel):
    index: int
    status: int = Field(description="201 stored, 200 replayed, 400, 404, 409 or 503 (retry).")
    feedback: FeedbackResponse | None = None
    error: str | None = None
    field: str | None = None


class FeedbackBatchResponse(BaseModel):
    results: list[FeedbackItemResult]
    stored: int
    replayed: int
    failed: int


class ModelsResponse(BaseModel):
    models: list[dict[str, Any]]
    last_refresh_error: str | None = None
    traffic_split: list[dict[str, Any]]
    changes: list[str] = Field(default_factory=list)
    restarting_model_processes: list[str] = Field(
        default_factory=list, description="Model processes being replaced right now."
    )


class ExportedFeedback(BaseModel):
    """One row of ``GET /v1/feedback/export?format=jsonl``: feedback joined with its
    prediction (the columns of ``storage.store.EXPORT_FIELDS``, in that order)."""

    feedback_id: str
    feedback_created_at: datetime
    prediction_id: str
    prediction_created_at: datetime
    text: str | None = Field(description="As stored: redacted, raw, or null (none).")
    text_storage: str
    text_sha256: str
    predicted_label: Label
    confidence: float
    scores: dict[str, float]
    model_version: str
    template_version: str
    language: str | None
    external_id: str | None
    external_source: str | None
    kind: Literal["label", "verdict"]
    label: Label | None
    verdict: Literal["correct", "incorrect"] | None
    effective_label: Label | None
    agrees: bool
    comment: str | None
    source: str | None
