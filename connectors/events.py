"""The connector-neutral shapes: a signed request in, ticket events out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers: the raw body as received, never re-serialised JSON."""

    method: str
    uri: str  # the full URI the CRM called (HubSpot signs it)
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class TicketEvent:
    """One text to score, under the CRM's ticket id (``external_id``).

    ``event_id`` is the CRM's id of the event, unique per connector: a delivery
    retried or replayed carries the same one, and is stored once. ``where`` names
    the payload field each value came from, for error messages.
    """

    event_id: str
    event_type: str
    text: str
    external_id: str
    comment_id: str | None = None
    author: str | None = None
    language: str | None = None
    where: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackEvent:
    """A CRM signal read as feedback (``connectors.feedback``): ``label`` for the
    latest prediction of the ticket ``external_id``. ``signal`` is the CRM's own value
    (a CSAT score, the tag an agent added), kept with the feedback."""

    event_id: str
    event_type: str
    external_id: str
    label: str
    signal: str
    author: str | None = None
    where: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Delivery:
    """A delivery read: the events to score, the feedback, and the event types
    acknowledged without either (unsupported, or without text), one entry per event."""

    events: list[TicketEvent] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    feedback: list[FeedbackEvent] = field(default_factory=list)
