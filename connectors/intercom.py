"""Intercom webhook notifications (topics ``conversation.user.created`` and
``conversation.user.replied``).

The conversation is the ticket (``data.item.id``); the notification's ``id`` is the
event id. A new conversation is scored as its first message (``data.item.source``),
a reply as the newest comment part the user wrote
(``data.item.conversation_parts.conversation_parts``). Intercom sends message bodies
as HTML: the text is taken out of the markup::

    {"type": "notification_event", "id": "notif_...", "topic": "conversation.user.replied",
     "app_id": "abc123", "created_at": 1764500000, "delivery_attempts": 1,
     "data": {"type": "notification_event_data", "item": {"type": "conversation",
       "id": "147", "source": {"id": "403", "body": "<p>...</p>", "author": {...}},
       "conversation_parts": {"conversation_parts": [
         {"id": "9901", "part_type": "comment", "body": "<p>...</p>",
          "author": {"type": "user", "id": "5f1a..."}}]}}}}
"""

from __future__ import annotations

from html import unescape
from html.parser import HTMLParser
from typing import Any

from connectors.errors import PayloadError
from connectors.events import Delivery, SignedRequest, TicketEvent
from connectors.feedback import FeedbackReader
from connectors.fields import JsonPayloads, as_object, identifier, text_of
from connectors.signatures import verify_intercom

USER_CREATED = "conversation.user.created"
USER_REPLIED = "conversation.user.replied"
_USER_AUTHORS = frozenset({"user", "lead", "contact"})
TICKET_ID = "$.data.item.id"  # where feedback rules find the conversation unless they say


class _TextOnly(HTMLParser):
    """The text of an HTML fragment, blocks and line breaks kept apart by spaces."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "p", "div", "li"):
            self.parts.append(" ")


def html_text(fragment: str) -> str:
    parser = _TextOnly()
    parser.feed(fragment)
    parser.close()
    return " ".join(unescape("".join(parser.parts)).split())


class IntercomConnector(JsonPayloads):
    name = "intercom"

    def __init__(self, secret: str | None, *, feedback: FeedbackReader | None = None) -> None:
        self.secret = secret
        self._feedback = (
            feedback
            if feedback is not None
            else FeedbackReader(self.name, [], external_id=TICKET_ID)
        )

    def verify(self, request: SignedRequest, *, now: float) -> None:
        assert self.secret is not None
        verify_intercom(request, self.secret)

    def parse(self, payload: Any, request: SignedRequest) -> Delivery:
        body = as_object(payload, "body")
        topic = body.get("topic")
        if not isinstance(topic, str) or not topic:
            raise PayloadError("topic is missing or not a string", "topic")
        event_id = identifier(body.get("id"), "id")
        assert event_id is not None
        feedback = self._feedback.read(event_id=event_id, event_type=topic, document=body)
        if feedback is not None:
            return Delivery(feedback=[feedback])
        if topic not in (USER_CREATED, USER_REPLIED):
            return Delivery(ignored=[topic])
        item = as_object(as_object(body.get("data"), "data").get("item"), "data.item")
        conversation_id = identifier(item.get("id"), "data.item.id")
        assert conversation_id is not None
        if topic == USER_CREATED:
            message, where = as_object(item.get("source"), "data.item.source"), "data.item.source"
        else:
            found = _newest_user_comment(item)
            if found is None:
                return Delivery(ignored=[topic])
            message, where = found
        text = html_text(text_of(message.get("body"), f"{where}.body"))
        if not text:
            return Delivery(ignored=[topic])
        author = message.get("author")
        return Delivery(
            events=[
                TicketEvent(
                    event_id=event_id,
                    event_type=topic,
                    text=text,
                    external_id=conversation_id,
                    comment_id=identifier(message.get("id"), f"{where}.id", required=False),
                    author=identifier(
                        author.get("id") if isinstance(author, dict) else None,
                        f"{where}.author.id",
                        required=False,
                    ),
                    where={"text": f"{where}.body", "external_id": "data.item.id"},
                )
            ]
        )


def _newest_user_comment(item: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    container = item.get("conversation_parts")
    parts = container.get("conversation_parts") if isinstance(container, dict) else None
    if not isinstance(parts, list):
        raise PayloadError(
            "data.item.conversation_parts.conversation_parts must be a list",
            "data.item.conversation_parts",
        )
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        author = part.get("author") if isinstance(part, dict) else None
        if (
            isinstance(part, dict)
            and part.get("part_type") == "comment"
            and isinstance(author, dict)
            and author.get("type") in _USER_AUTHORS
        ):
            return part, f"data.item.conversation_parts.conversation_parts[{index}]"
    return None
