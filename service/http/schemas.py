"""Request bodies of the HTTP API (the responses: ``service.http.responses``)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Feedback's body lives in feedback.intake: the API, batches and file imports share it.
from core.validation import field_errors
from feedback.intake import FeedbackRequest as FeedbackRequest
from model.language import ISO_639_1

# The response bodies and the limits live in service.http.responses (the client reads
# them without importing the store); re-exported here for the service.
from service.http.responses import MAX_CHARS_PER_TEXT as MAX_CHARS_PER_TEXT
from service.http.responses import MAX_FEEDBACK_BATCH as MAX_FEEDBACK_BATCH
from service.http.responses import MAX_REVIEW_ITEMS as MAX_REVIEW_ITEMS
from service.http.responses import MAX_TEXTS_PER_REQUEST as MAX_TEXTS_PER_REQUEST
from service.http.responses import FeedbackBatchResponse as FeedbackBatchResponse
from service.http.responses import FeedbackItemResult as FeedbackItemResult
from service.http.responses import FeedbackResponse as FeedbackResponse
from service.http.responses import ModelsResponse as ModelsResponse
from service.http.responses import Prediction as Prediction
from service.http.responses import PredictResponse as PredictResponse
from storage.fields import ExternalId, Source
from storage.fields import storable as _storable


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must contain at least one non-whitespace character")
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


def _known_language(code: str) -> str:
    if code not in ISO_639_1:
        raise ValueError(
            f"{code!r} is not an ISO 639-1 language code; send a known two-letter code "
            "(e.g. 'en', 'de') or leave it out to detect each text's language"
        )
    return code


LanguageCode = Annotated[
    str, StringConstraints(pattern=r"^[a-z]{2}$"), AfterValidator(_known_language)
]

# A Unix time is taken in seconds, up to 2100-01-01T00:00:00Z: pydantic reads a number
# above 2e10 as milliseconds, so `since=99999999999` silently meant 1973.
MAX_UNIX_SECONDS = 4_102_444_800
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


def _unix_seconds(value: object) -> object:
    """A Unix time in seconds (a number, or a string of one) as a UTC datetime, within
    [0, ``MAX_UNIX_SECONDS``); anything else is left to pydantic (ISO 8601)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 <= value < MAX_UNIX_SECONDS:
            raise ValueError(
                f"a Unix time is read in seconds, from 0 to {MAX_UNIX_SECONDS} "
                "(2100-01-01T00:00:00Z); send seconds in that range or an ISO 8601 time"
            )
        return datetime.fromtimestamp(value, UTC)
    return value


# ``since``/``until`` of the read endpoints: ISO 8601, or Unix seconds.
Moment = Annotated[datetime, BeforeValidator(_unix_seconds)]


class JsonBody(BaseModel):
    """A request body parsed as Python's ``json`` parses it when pydantic's parser
    refuses it: pydantic's refuses an unpaired surrogate escape (``"\\ud800"``) as
    invalid JSON, a 400 naming no field (``loc: []``); parsed here, the field's own
    check names it. Bodies pydantic parses take the fast path unchanged."""

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as error:
            if any(detail["type"] != "json_invalid" for detail in error.errors()):
                raise
            try:
                parsed = json.loads(json_data)
            except ValueError:
                raise error from None
            return cls.model_validate(parsed, **kwargs)


# The titles name the request bodies in validation errors ("1 validation error for
# the body of POST /v1/predict"): BentoML's error names the model's title, which
# would otherwise be its internal IODescriptor subclass.


class PredictRequest(JsonBody):
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
        description="Sticky A/B assignment key, e.g. a customer or ticket id (stored "
        "hashed); with 'texts', the key of every text.",
    )
    routing_keys: list[RoutingKey | None] | None = Field(
        default=None,
        max_length=MAX_TEXTS_PER_REQUEST,
        description="With 'texts', instead of 'routing_key': one key per text, in order "
        "(null: drawn at random), each routed (and stored hashed) on its own, e.g. a "
        "batch of tickets from several customers.",
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

    @field_validator("external_ids", "routing_keys")
    @classmethod
    def _one_per_text(
        cls, values: list[str | None] | None, info: ValidationInfo
    ) -> list[str | None] | None:
        """A list that goes with 'texts', one entry per text (the error names the list)."""
        if values is None:
            return None
        one = {"external_ids": "external_id", "routing_keys": "routing_key"}[str(info.field_name)]
        texts = info.data.get("texts")
        if texts is None:
            if "texts" not in info.data:  # 'texts' itself was refused: its error says why
                return values
            raise ValueError(f"'{info.field_name}' goes with 'texts'; with 'text' send '{one}'")
        if len(values) != len(texts):
            raise ValueError(
                f"'{info.field_name}' has {len(values)} entries for {len(texts)} texts; "
                "send one per text (null for none)"
            )
        return values

    @model_validator(mode="after")
    def _exactly_one_input(self) -> PredictRequest:
        # Each problem names the field to add (neither given) or to drop.
        problems = []
        if (self.text is None) == (self.texts is None):
            field = "text" if self.text is None else "texts"
            problems.append((field, "give exactly one of 'text' (a string) or 'texts' (a list)"))
        elif self.external_id is not None and self.text is None:
            problems.append(
                ("external_id", "'external_id' goes with 'text'; with 'texts' send 'external_ids'")
            )
        if self.routing_key is not None and self.routing_keys is not None:
            problems.append(
                (
                    "routing_key",
                    "give one of 'routing_key' (all texts) or 'routing_keys' (per text)",
                )
            )
        if problems:
            raise field_errors("the body of POST /v1/predict", problems)
        return self

    @property
    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])

    @property
    def all_external_ids(self) -> list[str | None]:
        if self.external_ids is not None:
            return list(self.external_ids)
        return [self.external_id] * len(self.all_texts)

    @property
    def all_routing_keys(self) -> list[str | None]:
        if self.routing_keys is not None:
            return list(self.routing_keys)
        return [self.routing_key] * len(self.all_texts)


class FeedbackBody(JsonBody, FeedbackRequest):
    """``FeedbackRequest`` as the body of ``POST /v1/feedback`` (see ``JsonBody``)."""


class FeedbackBatchRequest(JsonBody):
    """Up to 1,000 feedback items, each judged on its own."""

    model_config = ConfigDict(extra="forbid", title="the body of POST /v1/feedback/batch")

    items: list[Any] = Field(
        min_length=1,
        max_length=MAX_FEEDBACK_BATCH,
        description=f"Up to {MAX_FEEDBACK_BATCH} bodies of POST /v1/feedback.",
    )
