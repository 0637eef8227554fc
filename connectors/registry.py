"""The connectors by name, built once from the settings."""

from __future__ import annotations

from typing import Any, Protocol

from connectors import hubspot, intercom, zendesk
from connectors.events import Delivery, SignedRequest
from connectors.feedback import FeedbackReader
from connectors.generic import GenericConnector
from connectors.hubspot import HubSpotConnector
from connectors.intercom import IntercomConnector
from connectors.salesforce import SalesforceConnector
from connectors.zendesk import ZendeskConnector
from core.settings import FeedbackRule, Settings
from model.labels import LABELS

CONNECTOR_NAMES = ("generic", "hubspot", "intercom", "salesforce", "zendesk")


class Connector(Protocol):
    name: str
    secret: str | None  # None: unsigned (only with webhook_allow_unsigned)
    soap: bool  # answered with a SOAP envelope (Salesforce), else JSON

    def verify(self, request: SignedRequest, *, now: float) -> None:
        """Raise ``SignatureError`` unless the request is signed with the secret, in time."""

    def decode(self, body: bytes) -> Any:
        """The body's content (JSON, or Salesforce's XML); ``PayloadError`` if unreadable."""

    def parse(self, payload: Any, request: SignedRequest) -> Delivery:
        """The delivery's events; ``PayloadError`` naming the field at fault
        (``OriginRefused`` for a sender this service does not serve)."""


def _feedback_readers(settings: Settings) -> dict[str, FeedbackReader]:
    """Each connector's feedback rules (none unless configured), checked at start."""
    unknown = sorted(set(settings.webhook_feedback) - set(CONNECTOR_NAMES))
    if unknown:
        raise ValueError(
            f"SENTILOOP_WEBHOOK_FEEDBACK names no connector {unknown}; "
            f"connectors: {', '.join(CONNECTOR_NAMES)}"
        )
    tickets = {
        "generic": settings.webhook_generic_mapping.external_id,
        "hubspot": hubspot.TICKET_ID,
        "intercom": intercom.TICKET_ID,
        "salesforce": "$.Id",
        "zendesk": zendesk.TICKET_ID,
    }
    _not_own_writes(settings)
    readers = {}
    for name in CONNECTOR_NAMES:
        rules = settings.webhook_feedback.get(name, [])
        if name == "salesforce":  # a record's ticket id is the field its mapping names
            rules = [_salesforce_ticket(rule, settings) for rule in rules]
        readers[name] = FeedbackReader(name, rules, external_id=tickets[name])
    return readers


def _not_own_writes(settings: Settings) -> None:
    """Refuse feedback rules that would read sentiloop's own write-back as a person's
    label: the tag it adds to a Zendesk ticket, the HubSpot property it sets. Each
    scored ticket would then "confirm" its own prediction."""
    if settings.writeback_zendesk_url:
        own = {f"{settings.writeback_zendesk_tag_prefix}{label}".casefold() for label in LABELS}
        for rule in settings.webhook_feedback.get("zendesk", []):
            if own & set(rule.labels):
                raise ValueError(
                    f"SENTILOOP_WEBHOOK_FEEDBACK maps the Zendesk tag(s) "
                    f"{sorted(own & set(rule.labels))} that write-back adds itself: each "
                    "scored ticket would confirm its own label. Let agents correct with "
                    "tags of their own (e.g. corrected_neutral)"
                )
    if settings.writeback_hubspot_token is not None:
        changed = f"propertyChange:{settings.writeback_hubspot_property}"
        for rule in settings.webhook_feedback.get("hubspot", []):
            if rule.event_type.endswith(changed):  # ticket. or object.propertyChange
                raise ValueError(
                    f"SENTILOOP_WEBHOOK_FEEDBACK reads the HubSpot property "
                    f"{settings.writeback_hubspot_property!r} that write-back sets itself: "
                    "let agents correct in a property of their own"
                )


def _salesforce_ticket(rule: FeedbackRule, settings: Settings) -> FeedbackRule:
    mapping = settings.webhook_salesforce_objects.get(rule.event_type)
    if rule.external_id is not None or mapping is None:
        return rule
    return rule.model_copy(update={"external_id": f"$.{mapping.external_id}"})


def build_connectors(settings: Settings) -> dict[str, Connector]:
    """Every connector, with its secret (None: none set). Fails, as the service
    starts, when unsigned webhooks are allowed while authentication is required:
    secure by default, as the API's keys are."""
    if settings.webhook_allow_unsigned and settings.resolved_auth == "required":
        raise ValueError(
            "SENTILOOP_WEBHOOK_ALLOW_UNSIGNED is for local development and is refused "
            "while authentication is required (PostgreSQL, or SENTILOOP_AUTH=required): "
            "set each connector's secret, SENTILOOP_WEBHOOK_SECRET_<CONNECTOR>, instead"
        )

    def secret(name: str) -> str | None:
        value = settings.webhook_secret(name)
        return value.get_secret_value() if value is not None else None

    if secret("salesforce") is not None and settings.webhook_salesforce_organization_id is None:
        raise ValueError(
            "SENTILOOP_WEBHOOK_SECRET_SALESFORCE is set without "
            "SENTILOOP_WEBHOOK_SALESFORCE_ORGANIZATION_ID: Salesforce signs nothing, so its "
            "messages are accepted from your org only (Setup > Company Information: "
            "Salesforce.com Organization ID)"
        )
    feedback = _feedback_readers(settings)
    connectors: list[Connector] = [
        ZendeskConnector(
            secret("zendesk"), window_s=settings.webhook_tolerance_s, feedback=feedback["zendesk"]
        ),
        HubSpotConnector(
            secret("hubspot"),
            text_properties=settings.webhook_hubspot_text_properties,
            feedback=feedback["hubspot"],
        ),
        IntercomConnector(secret("intercom"), feedback=feedback["intercom"]),
        GenericConnector(secret("generic"), settings.webhook_generic_mapping, feedback["generic"]),
        SalesforceConnector(
            secret("salesforce"),
            organization_id=settings.webhook_salesforce_organization_id,
            objects=settings.webhook_salesforce_objects,
            feedback=feedback["salesforce"],
        ),
    ]
    return {connector.name: connector for connector in connectors}
