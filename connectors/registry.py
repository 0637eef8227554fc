"""The connectors by name, built once from the settings."""

from __future__ import annotations

from typing import Any, Protocol

from connectors.events import Delivery, SignedRequest
from connectors.generic import GenericConnector
from connectors.hubspot import HubSpotConnector
from connectors.intercom import IntercomConnector
from connectors.zendesk import ZendeskConnector
from core.settings import Settings

CONNECTOR_NAMES = ("generic", "hubspot", "intercom", "zendesk")


class Connector(Protocol):
    name: str
    secret: str | None  # None: unsigned (only with webhook_allow_unsigned)

    def verify(self, request: SignedRequest, *, now: float) -> None:
        """Raise ``SignatureError`` unless the request is signed with the secret, in time."""

    def parse(self, payload: Any, request: SignedRequest) -> Delivery:
        """The delivery's events; ``PayloadError`` naming the field at fault."""


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

    connectors: list[Connector] = [
        ZendeskConnector(secret("zendesk"), window_s=settings.webhook_tolerance_s),
        HubSpotConnector(
            secret("hubspot"), text_properties=settings.webhook_hubspot_text_properties
        ),
        IntercomConnector(secret("intercom")),
        GenericConnector(secret("generic"), settings.webhook_generic_mapping),
    ]
    return {connector.name: connector for connector in connectors}
