"""One way in for feedback: ``POST /v1/feedback``, each item of
``POST /v1/feedback/batch``, each row of ``sentiloop feedback import`` and the CRM
feedback of webhooks (``service.http.inbox``) are validated as a ``FeedbackRequest``
and turned into what is stored by ``to_input``, which applies
``SENTILOOP_TEXT_STORAGE`` to the comment.

Before, the import built its records by hand: a comment was stored unredacted, with
``SENTILOOP_TEXT_STORAGE=none`` too, 50 million characters long, and a value the
database refused (a NUL, a 150-character source) stopped the import.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

import storage
from core.settings import TextStorage
from core.validation import field_errors
from model.labels import Label, normalize_label
from storage.fields import Comment, ExternalId, IdempotencyKey, PredictionId, Source
from storage.redaction import stored_text

# Labels as the rest of the system takes them: names in any case, short names, the
# training data's class ids 0/1/2 (as numbers or strings).
FeedbackLabel = Annotated[Label, BeforeValidator(normalize_label)]


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
        "predictions sent with this source match (without it: those sent without a "
        "source, else those of the one source that sent the id).",
    )
    idempotency_key: IdempotencyKey | None = Field(
        default=None,
        description="Retries with the same key return the first result and store one row.",
    )

    @model_validator(mode="after")
    def _exactly_one_judgement(self) -> FeedbackRequest:
        # Each problem names the field to add (neither given) or to drop (both).
        problems = []
        if (self.prediction_id is None) == (self.external_id is None):
            field = "prediction_id" if self.prediction_id is None else "external_id"
            problems.append((field, "give exactly one of 'prediction_id' or 'external_id'"))
        if (self.label is None) == (self.verdict is None):
            field = "label" if self.label is None else "verdict"
            problems.append((field, "give exactly one of 'label' or 'verdict'"))
        if problems:
            raise field_errors("the body of POST /v1/feedback", problems)
        return self


def to_input(request: FeedbackRequest, text_storage: TextStorage) -> storage.FeedbackInput:
    """The feedback as stored: its comment kept, redacted or dropped like logged texts."""
    return storage.FeedbackInput(
        prediction_id=request.prediction_id,
        external_id=request.external_id,
        label=request.label,
        verdict=request.verdict,
        comment=stored_text(request.comment, text_storage) if request.comment else None,
        source=request.source,
        idempotency_key=request.idempotency_key,
    )


def first_problem(error: ValidationError) -> tuple[str | None, str]:
    """(the field, the message) of a validation error's first problem, in one line,
    without pydantic's "Value error, " before our validators' messages."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return field, first["msg"].removeprefix("Value error, ")
