"""CRM connectors: what a CRM's webhook delivery says, checked and read.

Each connector verifies its CRM's own signature scheme on the raw body
(``connectors.signatures``) and maps its payloads to ``TicketEvent``s (a text to
score under the ticket's id), to ``FeedbackEvent``s (a CRM signal mapped to a label
by ``SENTILOOP_WEBHOOK_FEEDBACK``) or to event types it acknowledges without either.
Nothing here touches HTTP or the database: ``service.http.webhooks`` answers the
requests and ``storage.inbox`` keeps the events until they are scored.
"""

from connectors.errors import (
    ConnectorError,
    ConnectorOff,
    OriginRefused,
    PayloadError,
    SignatureError,
)
from connectors.events import Delivery, FeedbackEvent, SignedRequest, TicketEvent
from connectors.registry import CONNECTOR_NAMES, Connector, build_connectors

__all__ = [
    "CONNECTOR_NAMES",
    "Connector",
    "ConnectorError",
    "ConnectorOff",
    "Delivery",
    "FeedbackEvent",
    "OriginRefused",
    "PayloadError",
    "SignatureError",
    "SignedRequest",
    "TicketEvent",
    "build_connectors",
]
