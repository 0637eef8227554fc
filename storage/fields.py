"""Strings that go into the database, with the limits of their columns: every way
data gets in (the API, its batches, file imports) validates with these types, so a
value the API refuses is refused everywhere, before the database sees it."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

MAX_COMMENT_CHARS = 2_000

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: str) -> str:
    """Refuse what no database stores the same way: NUL (PostgreSQL refuses it, SQLite
    cuts text at it) and unpaired surrogates (not encodable as UTF-8)."""
    found = _UNSTORABLE.search(value)
    if found is not None:
        what = "a NUL character" if found.group() == "\x00" else "an unpaired surrogate"
        raise ValueError(f"contains {what} at position {found.start()}; remove it")
    return value


def prediction_id(value: str) -> str:
    """A prediction id as the service makes them (a UUID), in the canonical lowercase
    form they are stored in; anything else is refused here, as a bad request, not
    looked up and answered "unknown prediction"."""
    storable(value)
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise ValueError(
            "is not a prediction id: POST /v1/predict returns them as UUIDs "
            "(e.g. 0192f0a4-7c1e-7b3a-9d2e-5f6a7b8c9d0e)"
        ) from None
    return str(parsed)


# Lengths as the columns of storage.models have them.
PredictionId = Annotated[
    str, StringConstraints(min_length=1, max_length=36), AfterValidator(prediction_id)
]
Comment = Annotated[str, StringConstraints(max_length=MAX_COMMENT_CHARS), AfterValidator(storable)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(storable)]
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(storable)
]
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(storable)
]
