"""Errors of a whole request body that still name a field.

A pydantic ``model_validator`` that raises ``ValueError`` makes an error with no
location, which the API could only answer as ``field: body`` (and a batch item as
``field: null``): "give exactly one of 'label' or 'verdict'" named neither. Raising
``field_errors(...)`` instead gives each problem the field a client must change; the
errors nest like any other (``items.3.label`` inside a batch)."""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


def field_errors(title: str, problems: list[tuple[str, str]]) -> ValidationError:
    """A validation error with one ``(field, message)`` error per problem, for a
    ``model_validator`` to raise."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", message), loc=(field,), input=None
            )
            for field, message in problems
        ],
    )
