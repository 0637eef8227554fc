"""Zendesk event webhooks (``zen:event-type:ticket.*``).

A ``zen:event-type:ticket.comment_added`` event is scored as its comment's body
under the ticket's id (``detail.id``); its ``id`` is the event id. The payload
(Zendesk's "Ticket events" reference)::

    {"type": "zen:event-type:ticket.comment_added", "id": "<event uuid>",
     "account_id": 123, "subject": "zen:ticket:5158", "time": "...",
     "detail": {"id": "5158", "subject": "...", ...},
     "event": {"comment": {"id": "10001", "body": "...", "is_public": true,
                           "author": {"id": "8447388090494", "is_staff": false, ...}}}}
"""

from __future__ import annotations

from typing import Any

from connectors.errors import PayloadError
from connectors.events import Delivery, SignedRequest, TicketEvent
from connectors.fields import as_object, identifier, language_of, text_of
from connectors.signatures import verify_zendesk

COMMENT_ADDED = "zen:event-type:ticket.comment_added"


class ZendeskConnector:
    name = "zendesk"

    def __init__(self, secret: str | None, *, window_s: float) -> None:
        self.secret = secret
        self._window_s = window_s

    def verify(self, request: SignedRequest, *, now: float) -> None:
        assert self.secret is not None
        verify_zendesk(request, self.secret, now=now, window_s=self._window_s)

    def parse(self, payload: Any, request: SignedRequest) -> Delivery:
        body = as_object(payload, "body")
        event_type = body.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise PayloadError("type is missing or not a string", "type")
        event_id = identifier(body.get("id"), "id")
        assert event_id is not None
        if event_type != COMMENT_ADDED:
            return Delivery(ignored=[event_type])
        detail = as_object(body.get("detail"), "detail")
        comment = as_object(as_object(body.get("event"), "event").get("comment"), "event.comment")
        text = text_of(comment.get("body"), "event.comment.body")
        if not text.strip():  # an attachment alone, say: nothing to score
            return Delivery(ignored=[event_type])
        author = comment.get("author")
        ticket_id = identifier(detail.get("id"), "detail.id")
        assert ticket_id is not None
        return Delivery(
            events=[
                TicketEvent(
                    event_id=event_id,
                    event_type=event_type,
                    text=text,
                    external_id=ticket_id,
                    comment_id=identifier(comment.get("id"), "event.comment.id", required=False),
                    author=identifier(
                        author.get("id") if isinstance(author, dict) else None,
                        "event.comment.author.id",
                        required=False,
                    ),
                    language=language_of(detail.get("locale")),
                    where={"text": "event.comment.body", "external_id": "detail.id"},
                )
            ]
        )
