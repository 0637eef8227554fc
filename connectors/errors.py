"""What can be wrong with a delivery; ``service.http.webhooks`` maps each to HTTP."""

from __future__ import annotations


class ConnectorError(Exception):
    """A refused delivery; ``field`` names the header or payload field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConnectorOff(ConnectorError):
    """No such connector, or one without a secret (404: the CRM is told nothing more)."""


class SignatureError(ConnectorError):
    """A missing, malformed, wrong or expired signature (401)."""


class PayloadError(ConnectorError):
    """A signed body that is not what the CRM documents (400)."""


class OriginRefused(ConnectorError):
    """A request with a valid credential from a sender this service does not serve:
    a Salesforce outbound message of another org (403)."""
