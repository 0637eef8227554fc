"""Write-back: the requests that put a scored label on the CRM's ticket.

Each target turns an outbox row (``storage.outbox``) into the requests its CRM's
API documents; ``service.http.writeback`` sends them and retries. Requests are
built at each attempt from the settings (a credential changed is used by the
next attempt; the outbox keeps no credential) and are idempotent, so sending one
twice leaves the ticket as sending it once does:

- **Zendesk** (Tags API): ``PUT /api/v2/tickets/{id}/tags`` *adds* the label's tag
  (``POST`` would replace every tag), ``DELETE`` of the same path removes only the
  tags of the other labels; optionally ``PUT /api/v2/tickets/{id}`` sets a custom
  field. Basic auth ``{email}/token:{api_token}``.
- **HubSpot** (CRM objects v3): ``PATCH /crm/v3/objects/tickets/{id}`` with
  ``{"properties": {<property>: <label>}}``, the private app's bearer token.
- **generic**: ``POST`` to the configured URL, signed with Standard Webhooks; the
  ``webhook-id`` is the row's ``message_id``, the same on every attempt, so the
  receiver can drop a repeat (the idempotency key). Zendesk and HubSpot take no
  idempotency key on these endpoints; their writes are idempotent by nature.

A write-back to a ticket is a state for Zendesk and HubSpot (``coalesce``: the
newest label wins, an older one not yet sent is superseded) and an event for the
generic callback (each is sent, in order). Nothing here sends anything or touches
the database. ``CrmRequest`` keeps its headers out of its ``repr``: credentials
are never logged.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from standardwebhooks import Webhook

from core.settings import Settings
from storage.outbox import OutboxItem

LABELS = ("negative", "neutral", "positive")
JSON = "application/json"
# Standard Webhooks' event type of a callback.
SCORED_EVENT = "sentiment.scored"


class WriteBackError(ValueError):
    """A row that no request can write (a ticket id the CRM cannot have): dead at once."""


@dataclass(frozen=True)
class CrmRequest:
    method: str
    url: str
    body: bytes
    headers: Mapping[str, str] = field(repr=False)  # credentials: never logged

    @property
    def where(self) -> str:
        """Method and URL without its query (which may hold a token), for messages."""
        parts = urlsplit(self.url)
        return f"{self.method} {parts.scheme}://{parts.netloc}{parts.path}"


class WriteBackTarget(Protocol):
    connector: str
    coalesce: bool  # a state (the newest label wins) rather than events

    def requests(self, item: OutboxItem, *, now: float) -> list[CrmRequest]:
        """The requests, in order, that write the item's label (``WriteBackError``
        when none can)."""


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class ZendeskWriteBack:
    connector = "zendesk"
    coalesce = True

    def __init__(
        self,
        url: str,
        *,
        email: str,
        api_token: str,
        tag_prefix: str,
        remove_other_tags: bool,
        custom_field_id: int | None,
    ) -> None:
        self._url = url.rstrip("/")
        credentials = base64.b64encode(f"{email}/token:{api_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}", "Content-Type": JSON}
        self._prefix = tag_prefix
        self._remove_others = remove_other_tags
        self._field = custom_field_id

    def tag(self, label: str) -> str:
        return f"{self._prefix}{label}"

    def requests(self, item: OutboxItem, *, now: float) -> list[CrmRequest]:
        ticket = item.write.external_id
        if not ticket.isdigit():
            raise WriteBackError(f"Zendesk ticket ids are numbers, not {ticket[:40]!r}")
        label = item.write.label
        tags = f"{self._url}/api/v2/tickets/{ticket}/tags"
        requests = [CrmRequest("PUT", tags, _json({"tags": [self.tag(label)]}), self._headers)]
        if self._remove_others:
            others = [self.tag(other) for other in LABELS if other != label]
            requests.append(CrmRequest("DELETE", tags, _json({"tags": others}), self._headers))
        if self._field is not None:
            body = {"ticket": {"custom_fields": [{"id": self._field, "value": label}]}}
            requests.append(
                CrmRequest(
                    "PUT", f"{self._url}/api/v2/tickets/{ticket}", _json(body), self._headers
                )
            )
        return requests


class HubSpotWriteBack:
    connector = "hubspot"
    coalesce = True

    def __init__(self, url: str, *, token: str, property_name: str) -> None:
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": JSON}
        self._property = property_name

    def requests(self, item: OutboxItem, *, now: float) -> list[CrmRequest]:
        ticket = quote(item.write.external_id, safe="")
        body = _json({"properties": {self._property: item.write.label}})
        url = f"{self._url}/crm/v3/objects/tickets/{ticket}"
        return [CrmRequest("PATCH", url, body, self._headers)]


class GenericWriteBack:
    connector = "generic"
    coalesce = False

    def __init__(self, url: str, *, secret: str) -> None:
        self._url = url
        self._webhook = Webhook(secret)

    @staticmethod
    def payload(item: OutboxItem) -> dict[str, Any]:
        """Standard Webhooks' recommended shape: ``type``, ``timestamp``, ``data``."""
        write = item.write
        return {
            "type": SCORED_EVENT,
            "timestamp": item.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "data": {
                "external_id": write.external_id,
                "event_id": write.event_id,
                "comment_id": write.comment_id,
                "prediction_id": write.prediction_id,
                "label": write.label,
                "confidence": write.confidence,
                "model_version": write.model_version,
                "template_version": write.template_version,
            },
        }

    def requests(self, item: OutboxItem, *, now: float) -> list[CrmRequest]:
        body = _json(self.payload(item))
        # Signed anew at each attempt (receivers refuse timestamps over 5 minutes old);
        # the webhook-id stays the same.
        signature = self._webhook.sign(
            msg_id=item.message_id, timestamp=datetime.fromtimestamp(now, UTC), data=body.decode()
        )
        headers = {
            "Content-Type": JSON,
            "webhook-id": item.message_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": signature,
        }
        return [CrmRequest("POST", self._url, body, headers)]


def _checked_url(url: str, setting: str) -> str:
    """An https URL (credentials travel with it); plain http to this machine only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting} must be an http(s) URL, not {url[:80]!r}")
    if parts.scheme == "http":
        host = parts.hostname
        try:
            local = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
        if not local:
            raise ValueError(
                f"{setting} must be https (credentials are sent to it); plain http is "
                "accepted for localhost only"
            )
    return url


def _needs(value: Any, setting: str, because: str) -> Any:
    if value is None or value == "":
        raise ValueError(f"{setting} is required when {because} is set")
    return value


def build_writebacks(settings: Settings) -> dict[str, WriteBackTarget]:
    """The write-back of each connector whose target is set (none by default). Fails,
    as the service starts, on a target set without its credentials."""
    targets: list[WriteBackTarget] = []
    if settings.writeback_zendesk_url:
        because = "SENTILOOP_WRITEBACK_ZENDESK_URL"
        token = _needs(
            settings.writeback_zendesk_api_token, "SENTILOOP_WRITEBACK_ZENDESK_API_TOKEN", because
        )
        targets.append(
            ZendeskWriteBack(
                _checked_url(settings.writeback_zendesk_url, because),
                email=_needs(
                    settings.writeback_zendesk_email, "SENTILOOP_WRITEBACK_ZENDESK_EMAIL", because
                ),
                api_token=token.get_secret_value(),
                tag_prefix=settings.writeback_zendesk_tag_prefix,
                remove_other_tags=settings.writeback_zendesk_remove_other_tags,
                custom_field_id=settings.writeback_zendesk_custom_field_id,
            )
        )
    if settings.writeback_hubspot_token is not None:
        targets.append(
            HubSpotWriteBack(
                _checked_url(settings.writeback_hubspot_url, "SENTILOOP_WRITEBACK_HUBSPOT_URL"),
                token=settings.writeback_hubspot_token.get_secret_value(),
                property_name=settings.writeback_hubspot_property,
            )
        )
    if settings.writeback_generic_url:
        because = "SENTILOOP_WRITEBACK_GENERIC_URL"
        secret = _needs(
            settings.writeback_generic_secret, "SENTILOOP_WRITEBACK_GENERIC_SECRET", because
        )
        url = _checked_url(settings.writeback_generic_url, because)
        try:
            target = GenericWriteBack(url, secret=secret.get_secret_value())
        except Exception as exc:  # standardwebhooks: bad base64, empty secret
            raise ValueError(
                "SENTILOOP_WRITEBACK_GENERIC_SECRET is not a Standard Webhooks secret "
                f"(whsec_ and base64): {type(exc).__name__}"
            ) from None
        targets.append(target)
    return {target.connector: target for target in targets}
