"""Zendesk event webhooks (``zen:event-type:ticket.*``).

A ``zen:event-type:ticket.comment_added`` event is scored as its comment's body
under the ticket's id (``detail.id``); its ``id`` is the event id. The payload
(Zendesk's "Ticket events" reference)::

    {"type": "zen:event-type:ticket.comment_added", "id": "<event uuid>",
     "account_id": 123, "subject": "zen:ticket:5158", "time": "...",
     "detail": {"id": "5158", "subject": "...", ...},
     "event": {"comment": {"id": "10001", "body": "...", "is_public": true,
                           "author": {"id": "8447388090494", "is_staff": false, ...}}}}

A comment whose author ``is_staff`` (an agent's reply or internal note) is
acknowledged and not scored, as Intercom's admin replies are not: the ticket's
label, its write-back tag and the feedback given by ticket id are the customer's,
and an agent's polite reply would otherwise replace them moments later.

Feedback (``connectors.feedback``, opt-in) comes from other events, typically a
trigger's webhook, whose JSON body the admin writes (Zendesk has no event for a
satisfaction rating: a trigger on "Satisfaction is Bad" sends, say,
``{"type": "satisfaction_rating", "detail": {"id": "{{ticket.id}}"},
"satisfaction_rating": {"score": "bad"}}``). A trigger's body has no event id: its
``X-Zendesk-Webhook-Invocation-Id`` header, the same on every attempt of one
invocation, is the event id then. Zendesk gives each webhook its own signing
secret, and a webhook serves either events or triggers, so the secret setting may
hold several, comma-separated (also how a secret is rotated): a request signed with
any of them is accepted.
"""

from __future__ import annotations

from typing import Any

from connectors.errors import PayloadError, SignatureError
from connectors.events import Delivery, SignedRequest, TicketEvent
from connectors.feedback import FeedbackReader
from connectors.fields import JsonPayloads, as_object, identifier, language_of, text_of
from connectors.signatures import ZENDESK_SIGNATURE, verify_zendesk

COMMENT_ADDED = "zen:event-type:ticket.comment_added"
INVOCATION_ID = "X-Zendesk-Webhook-Invocation-Id"
TICKET_ID = "$.detail.id"  # where feedback rules find the ticket unless they say


class ZendeskConnector(JsonPayloads):
    name = "zendesk"

    def __init__(
        self, secret: str | None, *, window_s: float, feedback: FeedbackReader | None = None
    ) -> None:
        self.secret = secret
        self._secrets = [part.strip() for part in (secret or "").split(",") if part.strip()]
        self._window_s = window_s
        self._feedback = (
            feedback
            if feedback is not None
            else FeedbackReader(self.name, [], external_id=TICKET_ID)
        )

    def verify(self, request: SignedRequest, *, now: float) -> None:
        """Signed with one of the secrets (one per Zendesk webhook), in time."""
        assert self.secret is not None
        refusal: SignatureError | None = None
        for secret in self._secrets:
            try:
                verify_zendesk(request, secret, now=now, window_s=self._window_s)
                return
            except SignatureError as exc:
                if exc.field != ZENDESK_SIGNATURE or not request.header(ZENDESK_SIGNATURE):
                    raise  # a missing header or an old timestamp: so for every secret
                refusal = exc
        raise refusal or SignatureError("no Zendesk secret is set", ZENDESK_SIGNATURE)

    def parse(self, payload: Any, request: SignedRequest) -> Delivery:
        body = as_object(payload, "body")
        event_type = body.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise PayloadError("type is missing or not a string", "type")
        if body.get("id") is None and request.header(INVOCATION_ID):
            event_id = identifier(request.header(INVOCATION_ID), INVOCATION_ID)
        else:
            event_id = identifier(body.get("id"), "id")
        assert event_id is not None
        feedback = self._feedback.read(event_id=event_id, event_type=event_type, document=body)
        if feedback is not None:
            return Delivery(feedback=[feedback])
        if event_type != COMMENT_ADDED:
            return Delivery(ignored=[event_type])
        detail = as_object(body.get("detail"), "detail")
        comment = as_object(as_object(body.get("event"), "event").get("comment"), "event.comment")
        text = text_of(comment.get("body"), "event.comment.body")
        if not text.strip():  # an attachment alone, say: nothing to score
            return Delivery(ignored=[event_type])
        author = comment.get("author")
        if isinstance(author, dict) and author.get("is_staff") is True:
            return Delivery(ignored=[event_type])  # an agent's reply: not the customer's
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
