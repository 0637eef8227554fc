"""Any system that signs with Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``), its payload mapped by JSONPath from the settings
(``SENTILOOP_WEBHOOK_GENERIC_MAPPING``). The event id is the ``webhook-id`` header."""

from __future__ import annotations

from typing import Any

from connectors import jsonpath
from connectors.errors import PayloadError
from connectors.events import Delivery, SignedRequest, TicketEvent
from connectors.feedback import FeedbackReader
from connectors.fields import JsonPayloads, identifier, language_of, text_of
from connectors.signatures import verify_standard
from core.settings import GenericMapping


class GenericConnector(JsonPayloads):
    name = "generic"

    def __init__(
        self, secret: str | None, mapping: GenericMapping, feedback: FeedbackReader | None = None
    ) -> None:
        self.secret = secret
        self.mapping = mapping
        self._feedback = (
            feedback
            if feedback is not None
            else FeedbackReader(self.name, [], external_id=mapping.external_id)
        )
        for field, path in mapping.model_dump(exclude={"event_types"}).items():
            if path is None:
                continue
            try:  # a bad path fails at start, not on the first delivery
                jsonpath.parse(path)
            except jsonpath.JsonPathError as exc:
                raise ValueError(f"SENTILOOP_WEBHOOK_GENERIC_MAPPING.{field}: {exc}") from exc

    def verify(self, request: SignedRequest, *, now: float) -> None:
        assert self.secret is not None
        verify_standard(request, self.secret)

    def _select(self, payload: Any, path: str | None) -> Any:
        return jsonpath.select(payload, path) if path is not None else None

    def parse(self, payload: Any, request: SignedRequest) -> Delivery:
        mapping = self.mapping
        event_id = identifier(request.header("webhook-id"), "webhook-id")
        assert event_id is not None
        event_type = "generic"
        if mapping.event_type is not None:
            found = self._select(payload, mapping.event_type)
            if not isinstance(found, str) or not found:
                raise PayloadError(f"{mapping.event_type} is missing", mapping.event_type)
            event_type = found
        feedback = self._feedback.read(event_id=event_id, event_type=event_type, document=payload)
        if feedback is not None:
            return Delivery(feedback=[feedback])
        filtered = mapping.event_type is not None and mapping.event_types
        if filtered and event_type not in mapping.event_types:
            return Delivery(ignored=[event_type])
        text = text_of(self._select(payload, mapping.text), mapping.text)
        if not text.strip():
            return Delivery(ignored=[event_type])
        external_id = identifier(self._select(payload, mapping.external_id), mapping.external_id)
        assert external_id is not None
        return Delivery(
            events=[
                TicketEvent(
                    event_id=event_id,
                    event_type=event_type,
                    text=text,
                    external_id=external_id,
                    comment_id=identifier(
                        self._select(payload, mapping.comment_id),
                        mapping.comment_id or "comment_id",
                        required=False,
                    ),
                    author=identifier(
                        self._select(payload, mapping.author),
                        mapping.author or "author",
                        required=False,
                    ),
                    language=language_of(self._select(payload, mapping.language)),
                    where={"text": mapping.text, "external_id": mapping.external_id},
                )
            ]
        )
