"""Salesforce outbound messages: SOAP 1.1 notifications sent by the "Outbound Message"
action of a record-triggered Flow (or of a workflow rule).

The payload (Salesforce's "Understanding the Outbound Messaging WSDL")::

    <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
                      xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
     <soapenv:Body>
      <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
       <OrganizationId>00D5e000000KQ2eEAG</OrganizationId>
       <ActionId>04k5e000000CaRkAAK</ActionId>
       <SessionId xsi:nil="true"/>
       <EnterpriseUrl>https://...</EnterpriseUrl>
       <PartnerUrl>https://...</PartnerUrl>
       <Notification>                                  (1 to 100 of them)
        <Id>04l5e00000Gx7QzAAJ</Id>
        <sObject xsi:type="sf:Case" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
         <sf:Id>5005e00000abcDEAAY</sf:Id>
         <sf:Subject>...</sf:Subject>
         <sf:Description>...</sf:Description>
        </sObject>
       </Notification>
      </notifications>
     </soapenv:Body>
    </soapenv:Envelope>

Each ``Notification`` is an event: its ``Id`` is the event id (Salesforce delivers a
message at least once and says to tell repeats by it). Its sObject type picks the
fields scored (``SENTILOOP_WEBHOOK_SALESFORCE_OBJECTS``; a Case's ``Subject`` and
``Description`` under its ``Id`` by default); other types are acknowledged. The
``SessionId`` (a live API session when the message is set to send one) is read by
nothing and kept nowhere.

Salesforce signs nothing, so a message is accepted when it carries the shared token
in its URL (``?token=``, ``SENTILOOP_WEBHOOK_SECRET_SALESFORCE``, compared in constant
time: 401 otherwise) and its ``OrganizationId`` is the configured org's (403
otherwise), as Salesforce's "Considerations for Security" asks of a listener. The
token is in the query, not the path, because BentoML's access log writes the path
only. The body is parsed by ``defusedxml`` with DTDs refused: a SOAP message has none,
and no entity can be expanded or fetched. The answer is the SOAP acknowledgement
(``service.http.webhooks``): a message not acknowledged is sent again for 24 hours.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from connectors.errors import OriginRefused, PayloadError, SignatureError
from connectors.events import Delivery, SignedRequest, TicketEvent
from connectors.feedback import FeedbackReader
from connectors.fields import identifier, language_of
from core.settings import SalesforceObject

SOAP_ENVELOPE = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
MAX_NOTIFICATIONS = 100  # the WSDL's maxOccurs
TOKEN = "token"  # the query parameter of the shared token


def _tag(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _value(element: Element) -> str | None:
    """An element's text; None where Salesforce sends ``xsi:nil="true"`` (no value)."""
    if element.get(_tag(XSI, "nil")) == "true":
        return None
    return element.text or ""


@dataclass(frozen=True)
class Notification:
    """One record: its notification id, sObject type and the fields the message sends."""

    id: str
    sobject_type: str
    fields: Mapping[str, str | None]
    where: str  # "Notification[2]", for error messages


@dataclass(frozen=True)
class OutboundMessage:
    organization_id: str
    action_id: str | None
    notifications: list[Notification] = field(default_factory=list)


def read_message(body: bytes) -> OutboundMessage:
    """The outbound message in ``body``; ``PayloadError`` naming the element at fault."""
    try:
        root = fromstring(body, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise PayloadError(f"the body declares a DTD or entities: {exc!r}", "body") from exc
    except ParseError as exc:
        raise PayloadError(f"the body is not well-formed XML: {exc}", "body") from exc
    if root.tag != _tag(SOAP_ENVELOPE, "Envelope"):
        raise PayloadError(
            f"the body is not a SOAP 1.1 envelope (root element {_local(root.tag)!r})", "body"
        )
    soap_body = root.find(_tag(SOAP_ENVELOPE, "Body"))
    found = soap_body.find(_tag(OUTBOUND, "notifications")) if soap_body is not None else None
    if found is None:
        raise PayloadError(
            "the envelope holds no notifications element of "
            "http://soap.sforce.com/2005/09/outbound: is this an outbound message?",
            "notifications",
        )
    organization_id = found.findtext(_tag(OUTBOUND, "OrganizationId"))
    if not organization_id:
        raise PayloadError("OrganizationId is missing", "OrganizationId")
    elements = found.findall(_tag(OUTBOUND, "Notification"))
    if len(elements) > MAX_NOTIFICATIONS:
        raise PayloadError(
            f"the message has {len(elements)} notifications; at most {MAX_NOTIFICATIONS}",
            "Notification",
        )
    notifications = []
    for index, element in enumerate(elements):
        where = f"Notification[{index}]"
        notification_id = identifier(element.findtext(_tag(OUTBOUND, "Id")), f"{where}.Id")
        assert notification_id is not None
        sobject = element.find(_tag(OUTBOUND, "sObject"))
        if sobject is None:
            raise PayloadError(f"{where}.sObject is missing", f"{where}.sObject")
        sobject_type = (sobject.get(_tag(XSI, "type")) or "").rpartition(":")[2]
        if not sobject_type:
            raise PayloadError(
                f"{where}.sObject has no xsi:type (such as sf:Case)", f"{where}.sObject"
            )
        notifications.append(
            Notification(
                id=notification_id,
                sobject_type=sobject_type,
                fields={_local(child.tag): _value(child) for child in sobject},
                where=where,
            )
        )
    return OutboundMessage(
        organization_id=organization_id.strip(),
        action_id=found.findtext(_tag(OUTBOUND, "ActionId")),
        notifications=notifications,
    )


def same_organization(sent: str, configured: str) -> bool:
    """Org ids come in 15 case-sensitive characters or 18 (the 15, then a checksum of
    their case): two ids name one org when their first 15 characters are equal."""
    return hmac.compare_digest(sent[:15].encode(), configured[:15].encode())


class SalesforceConnector:
    name = "salesforce"
    soap = True  # answered with the SOAP acknowledgement Salesforce expects

    def __init__(
        self,
        secret: str | None,
        *,
        organization_id: str | None,
        objects: Mapping[str, SalesforceObject],
        feedback: FeedbackReader | None = None,
    ) -> None:
        self.secret = secret
        self._organization_id = organization_id
        self._objects = dict(objects)
        self._feedback = (
            feedback if feedback is not None else FeedbackReader(self.name, [], external_id="$.Id")
        )

    def verify(self, request: SignedRequest, *, now: float) -> None:
        """The shared token of the endpoint URL (``?token=``), compared in constant time."""
        assert self.secret is not None
        presented = parse_qs(urlsplit(request.uri).query).get(TOKEN, [])
        if not presented:
            raise SignatureError(
                "missing token: the outbound message's endpoint URL must end in "
                "?token=<SENTILOOP_WEBHOOK_SECRET_SALESFORCE>",
                TOKEN,
            )
        if len(presented) > 1 or not hmac.compare_digest(
            presented[0].encode(), self.secret.encode()
        ):
            raise SignatureError("the token does not match: wrong or outdated token", TOKEN)

    def decode(self, body: bytes) -> OutboundMessage:
        return read_message(body)

    def parse(self, payload: Any, request: SignedRequest) -> Delivery:
        message: OutboundMessage = payload
        if self._organization_id is not None and not same_organization(
            message.organization_id, self._organization_id
        ):
            raise OriginRefused(
                f"OrganizationId {message.organization_id[:18]!r} is not the org of "
                "SENTILOOP_WEBHOOK_SALESFORCE_ORGANIZATION_ID",
                "OrganizationId",
            )
        delivery = Delivery()
        for notification in message.notifications:
            mapping = self._objects.get(notification.sobject_type)
            feedback = self._feedback.read(
                event_id=notification.id,
                event_type=notification.sobject_type,
                document=dict(notification.fields),
                where=f"{notification.where}.sObject",
            )
            if feedback is not None:
                delivery.feedback.append(feedback)
            elif mapping is None:
                delivery.ignored.append(notification.sobject_type)
            else:
                event = self._event(notification, mapping)
                if event is None:
                    delivery.ignored.append(notification.sobject_type)
                else:
                    delivery.events.append(event)
        return delivery

    @staticmethod
    def _event(notification: Notification, mapping: SalesforceObject) -> TicketEvent | None:
        """The record's text to score; None when its text fields are all empty."""
        fields, where = notification.fields, f"{notification.where}.sObject"
        parts = [fields.get(name) for name in mapping.text]
        text = "\n".join(part for part in parts if part and part.strip())
        if not text:
            return None
        external_id = identifier(fields.get(mapping.external_id), f"{where}.{mapping.external_id}")
        assert external_id is not None
        author = None
        if mapping.author is not None:
            author = identifier(
                fields.get(mapping.author), f"{where}.{mapping.author}", required=False
            )
        return TicketEvent(
            event_id=notification.id,
            event_type=notification.sobject_type,
            text=text,
            external_id=external_id,
            author=author,
            language=language_of(fields.get(mapping.language)) if mapping.language else None,
            where={
                "text": f"{where}.{'+'.join(mapping.text)}",
                "external_id": f"{where}.{mapping.external_id}",
            },
        )
