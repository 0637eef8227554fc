"""Request and response bodies of the HTTP API, with their limits."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from model.labels import Label, normalize_label

MAX_TEXTS_PER_REQUEST = 256
MAX_CHARS_PER_TEXT = 5_000
MAX_COMMENT_CHARS = 2_000
MAX_FEEDBACK_BATCH = 1_000
MAX_REVIEW_ITEMS = 500


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must contain at least one non-whitespace character")
    return value


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(value: str) -> str:
    """Refuse what no database stores the same way: NUL (PostgreSQL refuses it, SQLite
    cuts text at it) and unpaired surrogates (not encodable as UTF-8)."""
    found = _UNSTORABLE.search(value)
    if found is not None:
        what = "a NUL character" if found.group() == "\x00" else "an unpaired surrogate"
        raise ValueError(f"contains {what} at position {found.start()}; remove it")
    return value


# Every string a request carries is checked with _storable, after its length.
Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_CHARS_PER_TEXT),
    AfterValidator(_storable),
    AfterValidator(_not_blank),
]
TemplateVersion = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_storable)
]
RoutingKey = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)
]
PredictionId = Annotated[
    str, StringConstraints(min_length=1, max_length=36), AfterValidator(_storable)
]
Comment = Annotated[str, StringConstraints(max_length=MAX_COMMENT_CHARS), AfterValidator(_storable)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_storable)]
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)
]
# Labels as the rest of the system takes them: names in any case, short names, the
# training data's class ids 0/1/2 (as numbers or strings).
FeedbackLabel = Annotated[Label, BeforeValidator(normalize_label)]
LanguageCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$")]
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_storable)
]


# The titles name the request bodies in validation errors ("1 validation error for
# the body of POST /v1/predict"): BentoML's error names the model's title, which
# would otherwise be its internal IODescriptor subclass.


class PredictRequest(BaseModel):
    """One text (``text``) or a list of texts (``texts``)."""

    model_config = ConfigDict(extra="forbid", title="the body of POST /v1/predict")

    text: Text | None = Field(default=None, description="One text to score.")
    texts: list[Text] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEXTS_PER_REQUEST,
        description=f"Up to {MAX_TEXTS_PER_REQUEST} texts, each at most "
        f"{MAX_CHARS_PER_TEXT} characters.",
    )
    template_version: TemplateVersion | None = Field(
        default=None, description="Force a prompt template version."
    )
    routing_key: RoutingKey | None = Field(
        default=None,
        description="Sticky A/B assignment key, e.g. a customer or ticket id (stored hashed).",
    )
    language: LanguageCode | None = Field(
        default=None,
        description="ISO 639-1 code (two lowercase letters) of the texts' language; "
        "detected per text when absent.",
    )
    external_id: ExternalId | None = Field(
        default=None,
        description="Your id of the text (ticket, review or chat id), with 'text': "
        "feedback may name it instead of the prediction_id, days later.",
    )
    external_ids: list[ExternalId | None] | None = Field(
        default=None,
        max_length=MAX_TEXTS_PER_REQUEST,
        description="Your ids of the texts, with 'texts': one per text, in order (null "
        "for a text without one).",
    )
    source: Source | None = Field(
        default=None, description="The system the texts come from (a CRM), stored with them."
    )

    @model_validator(mode="after")
    def _exactly_one_input(self) -> PredictRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list)")
        if self.external_id is not None and self.text is None:
            raise ValueError("'external_id' goes with 'text'; with 'texts' send 'external_ids'")
        if self.external_ids is not None:
            if self.texts is None:
                raise ValueError("'external_ids' goes with 'texts'; with 'text' send 'external_id'")
            if len(self.external_ids) != len(self.texts):
                raise ValueError(
                    f"'external_ids' has {len(self.external_ids)} entries for "
                    f"{len(self.texts)} texts; send one per text (null for none)"
                )
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    @property
    def all_external_ids(self) -> list[str | None]:
        if self.external_ids is not None:
            return list(self.external_ids)
        return [self.external_id] * len(self.all_texts)


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
        description="Whether the model was trained on this language; false: answered "
        "by the multilingual encoder alone, expect lower quality."
    )
    latency_ms: float


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class FeedbackRequest(BaseModel):
    """A correction (``label``) or a thumbs up/down (``verdict``) on one prediction,
    named by ``prediction_id`` or by your ``external_id`` (+ ``source``)."""

    model_config = ConfigDict(extra="forbid", title="the body of POST /v1/feedback")

    prediction_id: PredictionId | None = Field(
        default=None, description="The prediction_id that POST /v1/predict returned."
    )
    external_id: ExternalId | None = Field(
        default=None,
        description="Instead of prediction_id: the external_id sent with the text; the "
        "latest prediction of it before this feedback is judged.",
    )
    label: FeedbackLabel | None = Field(
        default=None,
        description="The correct label: negative, neutral or positive (any case; also "
        "neg/neu/pos or the class ids 0/1/2).",
    )
    verdict: Literal["correct", "incorrect"] | None = Field(
        default=None, description="Thumbs up (correct) or down (incorrect)."
    )
    comment: Comment | None = None
    source: Source | None = Field(
        default=None,
        description="Where the feedback comes from (a CRM); with external_id, only "
        "predictions sent with this source match.",
    )
    idempotency_key: IdempotencyKey | None = Field(
        default=None,
        description="Retries with the same key return the first result and store one row.",
    )

    @model_validator(mode="after")
    def _exactly_one_judgement(self) -> FeedbackRequest:
        if (self.label is None) == (self.verdict is None):
            raise ValueError("give exactly one of 'label' or 'verdict'")
        if (self.prediction_id is None) == (self.external_id is None):
            raise ValueError("give exactly one of 'prediction_id' or 'external_id'")
        return self


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


class FeedbackBatchRequest(BaseModel):
    """Up to 1,000 feedback items, each judged on its own."""

    model_config = ConfigDict(extra="forbid", title="the body of POST /v1/feedback/batch")

    items: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_FEEDBACK_BATCH,
        description=f"Up to {MAX_FEEDBACK_BATCH} bodies of POST /v1/feedback.",
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
