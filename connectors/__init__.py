"""CRM connectors: what a CRM's webhook delivery says, checked and read.

Each connector verifies its CRM's own signature scheme on the raw body
(``connectors.signatures``) and maps its payloads to ``TicketEvent``s (a text to
score under the ticket's id) or to event types it acknowledges without scoring.
Nothing here touches HTTP or the database: ``service.http.webhooks`` answers the
requests and ``storage.inbox`` keeps the events until they are scored.
"""

from connectors.errors import ConnectorError, ConnectorOff, PayloadError, SignatureError
from connectors.events import Delivery, SignedRequest, TicketEvent
from connectors.registry import CONNECTOR_NAMES, Connector, build_connectors

__all__ = [
    "CONNECTOR_NAMES",
    "Connector",
    "ConnectorError",
    "ConnectorOff",
    "Delivery",
    "PayloadError",
    "SignatureError",
    "SignedRequest",
    "TicketEvent",
    "build_connectors",
]
