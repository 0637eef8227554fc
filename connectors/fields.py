"""Reading fields out of payloads, with errors that name the field."""

from __future__ import annotations

import json
from typing import Any

from connectors.errors import PayloadError
from model.language import ISO_639_1


def as_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{where} must be a JSON object", where)
    return value


def identifier(value: Any, where: str, *, required: bool = True) -> str | None:
    """An id as text: CRMs send ids as numbers or strings (Zendesk's event webhooks
    send strings, its REST API numbers)."""
    if value is None or value == "":
        if required:
            raise PayloadError(f"{where} is missing", where)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadError(f"{where} must be a string or an integer", where)
    text = str(value)
    if len(text) > 200:
        raise PayloadError(f"{where} is longer than 200 characters", where)
    return text


def text_of(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"{where} must be a string", where)
    return value


def language_of(value: Any) -> str | None:
    """A two-letter ISO 639-1 code from a locale (``en-US``, ``pt_BR``, ``de``); None
    (detect the language) for anything else."""
    if not isinstance(value, str):
        return None
    primary = value.replace("_", "-").split("-")[0].strip().lower()
    return primary if primary in ISO_639_1 else None


class JsonPayloads:
    """For connectors whose CRM sends JSON: the body as its JSON value."""

    soap = False  # answered with JSON (the salesforce connector: SOAP)

    def decode(self, body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:  # UnicodeDecodeError too
            raise PayloadError(f"the body is not JSON: {exc}", "body") from exc
