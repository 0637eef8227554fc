"""HubSpot webhook subscriptions (the Webhooks API of an app).

A delivery is a JSON array of up to 100 events. A change of a ticket's text
property (``ticket.propertyChange``, or ``object.propertyChange`` of object type
``0-5``, for each property in ``webhook_hubspot_text_properties``; ``content`` by
default) is scored as ``propertyValue`` under the ticket's ``objectId``::

    [{"eventId": 100, "subscriptionId": 1234, "portalId": 62515, "appId": 54321,
      "occurredAt": 1764500000000, "subscriptionType": "ticket.propertyChange",
      "attemptNumber": 0, "objectId": 1246965, "propertyName": "content",
      "propertyValue": "...", "changeSource": "CRM_UI", "sourceId": "userId:45678"}]

HubSpot documents ``eventId`` as not guaranteed unique: an event's id here joins it
with the portal, subscription, object and time (all unchanged on a retry).

Feedback rules (``connectors.feedback``) see each event on its own, its type with
the property changed (``ticket.propertyChange:sentiment_override``), the ticket at
``$.objectId``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from connectors.errors import PayloadError
from connectors.events import Delivery, SignedRequest, TicketEvent
from connectors.feedback import FeedbackReader
from connectors.fields import JsonPayloads, as_object, identifier, text_of
from connectors.signatures import verify_hubspot

PROPERTY_CHANGE = ("ticket.propertyChange", "object.propertyChange")
TICKET_OBJECT_TYPE = "0-5"
MAX_EVENTS = 100  # HubSpot sends at most 100 events per request
TICKET_ID = "$.objectId"  # where feedback rules find the ticket unless they say


class HubSpotConnector(JsonPayloads):
    name = "hubspot"

    def __init__(
        self,
        secret: str | None,
        *,
        text_properties: Sequence[str],
        feedback: FeedbackReader | None = None,
    ) -> None:
        self.secret = secret
        self._text_properties = frozenset(text_properties)
        self._feedback = (
            feedback
            if feedback is not None
            else FeedbackReader(self.name, [], external_id=TICKET_ID)
        )

    def verify(self, request: SignedRequest, *, now: float) -> None:
        assert self.secret is not None
        verify_hubspot(request, self.secret, now=now)

    def parse(self, payload: Any, request: SignedRequest) -> Delivery:
        if not isinstance(payload, list):
            raise PayloadError("body must be a JSON array of events", "body")
        if len(payload) > MAX_EVENTS:
            raise PayloadError(f"body has {len(payload)} events; at most {MAX_EVENTS}", "body")
        delivery = Delivery()
        for index, item in enumerate(payload):
            where = f"[{index}]"
            event = as_object(item, where)
            kind = event.get("subscriptionType")
            if not isinstance(kind, str) or not kind:
                raise PayloadError(
                    f"{where}.subscriptionType is missing", f"{where}.subscriptionType"
                )
            parts = [
                identifier(event.get(name), f"{where}.{name}")
                for name in ("portalId", "subscriptionId", "objectId", "eventId", "occurredAt")
            ]
            event_id = "-".join(str(part) for part in parts)
            changed = event.get("propertyName")
            feedback = self._feedback.read(
                event_id=event_id,
                event_type=f"{kind}:{changed}" if isinstance(changed, str) else kind,
                document=event,
                where=where,
            )
            if feedback is not None:
                delivery.feedback.append(feedback)
                continue
            if not self._scored(event, kind):
                delivery.ignored.append(kind)
                continue
            text = text_of(event.get("propertyValue"), f"{where}.propertyValue")
            if not text.strip():
                delivery.ignored.append(kind)
                continue
            source = event.get("sourceId")
            delivery.events.append(
                TicketEvent(
                    event_id=event_id,
                    event_type=f"{kind}:{event['propertyName']}",
                    text=text,
                    external_id=str(parts[2]),
                    author=source if isinstance(source, str) and source else None,
                    where={"text": f"{where}.propertyValue", "external_id": f"{where}.objectId"},
                )
            )
        return delivery

    def _scored(self, event: dict[str, Any], kind: str) -> bool:
        if kind not in PROPERTY_CHANGE or event.get("propertyName") not in self._text_properties:
            return False
        return kind == "ticket.propertyChange" or event.get("objectTypeId") == TICKET_OBJECT_TYPE
