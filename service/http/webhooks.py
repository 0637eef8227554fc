"""``POST /v1/webhooks/{connector}``: CRM deliveries checked, stored, acknowledged.

The connector (``connectors``) checks the CRM's signature on the raw body and reads
the payload; the events are committed to the inbox (``storage.inbox``) and the
request is answered at once (202; 200 when nothing new was stored). Scoring
follows in ``service.http.inbox``. A CRM disables a webhook that keeps failing, so
only what is the sender's fault is refused: a bad signature (401), a body that is
not what the CRM documents (400), an unknown or unconfigured connector (404);
event types that are not scored are acknowledged and counted. The database down
is a 503 with Retry-After: the CRM retries, and the inbox stores each event once.
Salesforce is answered in SOAP: its acknowledgement (``<Ack>true</Ack>``, 200) once
the notifications are stored, a SOAP fault with the same statuses otherwise.

Feedback events (a CSAT score, an agent's tag: ``SENTILOOP_WEBHOOK_FEEDBACK``) are
stored in the inbox the same way and applied by the inbox worker, so that one
arriving before its ticket's text is scored waits for it instead of being lost.

No API key is asked for here (the guard lets ``/v1/webhooks/`` through): the
signature is the credential (Salesforce's: the token in the URL and its org id). A
connector without a secret answers 404 unless ``SENTILOOP_WEBHOOK_ALLOW_UNSIGNED``
(refused at start when authentication is required, and then served to local clients
only, as /v1 is without authentication).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from xml.sax.saxutils import escape

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connectors import (
    CONNECTOR_NAMES,
    Connector,
    PayloadError,
    SignatureError,
    SignedRequest,
    TicketEvent,
    build_connectors,
)
from connectors.errors import OriginRefused
from connectors.events import FeedbackEvent
from core import database
from core.settings import Settings
from service.http.errors import RETRY_AFTER_S
from service.http.guard import is_loopback
from service.http.schemas import MAX_CHARS_PER_TEXT
from service.metrics import WebhookMetrics
from storage import inbox
from storage.fields import storable

logger = logging.getLogger(__name__)


SOAP_XML = "text/xml; charset=utf-8"
_SOAP_OPEN = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    "<soapenv:Body>"
)
_SOAP_CLOSE = "</soapenv:Body></soapenv:Envelope>"
# What Salesforce's outbound messaging WSDL asks a listener to answer.
SALESFORCE_ACK = (
    _SOAP_OPEN + '<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
    "<Ack>true</Ack></notificationsResponse>" + _SOAP_CLOSE
)


def _error(
    status: int, message: str, field: str | None, *, soap: bool = False
) -> JSONResponse | Response:
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    if soap:  # a SOAP 1.1 fault: Salesforce shows its faultstring in its delivery log
        code = "soapenv:Server" if status >= 500 else "soapenv:Client"
        reason = f"{message} (field: {field})" if field else message
        fault = (
            f"<soapenv:Fault><faultcode>{code}</faultcode>"
            f"<faultstring>{escape(reason)}</faultstring></soapenv:Fault>"
        )
        return Response(
            _SOAP_OPEN + fault + _SOAP_CLOSE, status, headers=headers, media_type=SOAP_XML
        )
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


class WebhookReceiver:
    """Answers webhook deliveries; ``on_stored`` is called (on the event loop) when
    new events wait in the inbox."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        metrics: WebhookMetrics,
        *,
        on_stored: Callable[[], None],
    ) -> None:
        self._connectors = build_connectors(settings)
        self._sessions = sessions
        self._metrics = metrics
        self._on_stored = on_stored
        self._allow_unsigned = settings.webhook_allow_unsigned
        self._allow_remote = settings.allow_unauthenticated_remote
        self._public_url = (
            settings.webhook_public_url.rstrip("/") if settings.webhook_public_url else None
        )
        unsigned = sorted(name for name, c in self._connectors.items() if c.secret is None)
        if self._allow_unsigned and unsigned:
            logger.warning(
                "webhooks of %s are accepted UNSIGNED (SENTILOOP_WEBHOOK_ALLOW_UNSIGNED; "
                "local development only)",
                ", ".join(unsigned),
            )
        for name in CONNECTOR_NAMES:  # export zeros: a rate over a counter that exists
            self._metrics.events.labels(name, "stored")

    async def receive(self, name: str, request: Request) -> JSONResponse | Response:
        connector = self._connectors.get(name)
        if connector is None:
            known = ", ".join(CONNECTOR_NAMES)
            return _error(404, f"no connector {name[:40]!r}; connectors: {known}", "connector")
        if connector.secret is None and not self._allow_unsigned:
            self._metrics.deliveries.labels(name, "off").inc()
            return _error(
                404,
                f"the {name} connector is off: set SENTILOOP_WEBHOOK_SECRET_{name.upper()}",
                "connector",
                soap=connector.soap,
            )
        signed = SignedRequest(
            method=request.method,
            uri=self._uri(request),
            headers={key.lower(): value for key, value in request.headers.items()},
            body=await request.body(),
        )
        refusal = self._check(connector, signed, request)
        if refusal is not None:
            return refusal
        try:
            delivery = connector.parse(connector.decode(signed.body), signed)
            entries = [self._entry(name, event) for event in delivery.events]
            entries += [self._feedback_entry(name, event) for event in delivery.feedback]
        except OriginRefused as exc:
            self._metrics.deliveries.labels(name, "origin").inc()
            logger.warning("webhook %s refused: %s", name, exc)
            return _error(403, str(exc), exc.field, soap=connector.soap)
        except PayloadError as exc:
            self._metrics.deliveries.labels(name, "invalid").inc()
            return _error(400, str(exc), exc.field, soap=connector.soap)
        try:
            stored = await asyncio.to_thread(self._store, entries) if entries else 0
        except SQLAlchemyError as exc:
            self._metrics.deliveries.labels(name, "unavailable").inc()
            logger.warning(
                "webhook events not stored: database unavailable: %s",
                database.describe_error(exc),
            )
            return _error(503, "the inbox is unavailable; retry shortly", None, soap=connector.soap)
        self._metrics.deliveries.labels(name, "accepted").inc()
        self._metrics.events.labels(name, "stored").inc(stored)
        self._metrics.events.labels(name, "duplicate").inc(len(entries) - stored)
        self._metrics.events.labels(name, "unsupported").inc(len(delivery.ignored))
        if stored:
            self._on_stored()
        if connector.soap:  # Salesforce: acknowledged, or it sends the message again
            return Response(SALESFORCE_ACK, 200, media_type=SOAP_XML)
        body = {
            "stored": stored,
            "duplicates": len(entries) - stored,
            "ignored": len(delivery.ignored),
        }
        return JSONResponse(body, status_code=202 if stored else 200)

    def _uri(self, request: Request) -> str:
        """The URI the CRM called (HubSpot signs it): behind a proxy that terminates
        TLS, ``webhook_public_url`` gives its scheme and host."""
        if self._public_url is None:
            return str(request.url)
        query = f"?{request.url.query}" if request.url.query else ""
        return f"{self._public_url}{request.url.path}{query}"

    def _check(
        self, connector: Connector, signed: SignedRequest, request: Request
    ) -> JSONResponse | Response | None:
        name = connector.name
        if connector.secret is None:  # allowed unsigned: local clients only
            client = (request.client.host, request.client.port) if request.client else None
            if self._allow_remote or is_loopback(client):
                return None
            self._metrics.deliveries.labels(name, "unsigned_refused").inc()
            return _error(
                403,
                f"the {name} connector has no secret, so only local clients are served: "
                f"set SENTILOOP_WEBHOOK_SECRET_{name.upper()}",
                "connector",
                soap=connector.soap,
            )
        try:
            connector.verify(signed, now=time.time())
        except SignatureError as exc:
            self._metrics.deliveries.labels(name, "signature").inc()
            logger.warning("webhook %s refused: %s", name, exc)
            return _error(401, str(exc), exc.field, soap=connector.soap)
        return None

    @staticmethod
    def _entry(name: str, event: TicketEvent) -> inbox.InboxEntry:
        """The event as stored: its text cut to what /v1/predict takes (the model reads
        far less: ``SENTILOOP_MAX_LENGTH`` tokens), every string storable."""
        values = {
            "text": event.text[:MAX_CHARS_PER_TEXT],
            "external_id": event.external_id,
            "event_id": event.event_id,
            "comment_id": event.comment_id,
            "author": event.author,
        }
        for field, value in values.items():
            if value is None:
                continue
            try:
                storable(value)
            except ValueError as exc:
                raise PayloadError(
                    f"{event.where.get(field, field)} {exc}", event.where.get(field, field)
                ) from exc
        return inbox.InboxEntry(
            connector=name,
            event_id=event.event_id,
            event_type=event.event_type[:200],
            text=values["text"] or "",
            external_id=event.external_id,
            comment_id=event.comment_id,
            author=event.author,
            language=event.language,
        )

    @staticmethod
    def _feedback_entry(name: str, event: FeedbackEvent) -> inbox.InboxEntry:
        """The feedback as stored: applied later by ticket id, every string storable."""
        for field, value in (
            ("external_id", event.external_id),
            ("event_id", event.event_id),
            ("signal", event.signal),
            ("author", event.author),
        ):
            if value is None:
                continue
            try:
                storable(value)
            except ValueError as exc:
                where = event.where.get(field, field)
                raise PayloadError(f"{where} {exc}", where) from exc
        return inbox.InboxEntry(
            connector=name,
            event_id=event.event_id,
            event_type=event.event_type[:200],
            text="",
            external_id=event.external_id,
            author=event.author,
            feedback=inbox.FeedbackSignal(label=event.label, signal=event.signal[:200]),
        )

    def _store(self, entries: list[inbox.InboxEntry]) -> int:
        with self._sessions() as session:
            stored = inbox.add(session=session, entries=entries)
            session.commit()
        return stored
