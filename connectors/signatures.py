"""Each CRM's signature scheme, checked on the raw body with constant-time compares.

Every check takes the time as an argument (``now``, Unix seconds) so that a
timestamp's age is judged against one clock and tests can hold it still.
Timestamps outside the window are refused whether old (a captured request sent
again later) or ahead of the clock; a replay inside the window carries an event
id the inbox already holds and is stored once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import datetime

from standardwebhooks import Webhook, WebhookVerificationError

from connectors.errors import SignatureError
from connectors.events import SignedRequest

# HubSpot's documented window for X-HubSpot-Request-Timestamp.
HUBSPOT_WINDOW_S = 300.0

ZENDESK_SIGNATURE = "X-Zendesk-Webhook-Signature"
ZENDESK_TIMESTAMP = "X-Zendesk-Webhook-Signature-Timestamp"
HUBSPOT_SIGNATURE = "X-HubSpot-Signature-v3"
HUBSPOT_TIMESTAMP = "X-HubSpot-Request-Timestamp"
INTERCOM_SIGNATURE = "X-Hub-Signature"


def _required(request: SignedRequest, name: str) -> str:
    value = request.header(name)
    if not value:
        raise SignatureError(f"missing {name} header: is the webhook's secret set?", name)
    return value


def _within(moment: float, now: float, window_s: float, header: str) -> None:
    if moment < now - window_s:
        raise SignatureError(
            f"{header} is {now - moment:.0f} s old, beyond the {window_s:.0f} s window: "
            "refused as a possible replay",
            header,
        )
    if moment > now + window_s:
        raise SignatureError(
            f"{header} is {moment - now:.0f} s ahead of this server's clock, beyond the "
            f"{window_s:.0f} s window",
            header,
        )


def _same(expected: str, presented: str, header: str) -> None:
    if not hmac.compare_digest(expected.encode(), presented.strip().encode()):
        raise SignatureError(
            f"{header} does not match the body: wrong secret or altered body", header
        )


def _hmac_base64(secret: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret, message, hashlib.sha256).digest()).decode()


def _zendesk_time(value: str) -> float:
    """Zendesk's timestamp: ISO 8601 (``2026-11-30T13:05:00Z``); Unix seconds accepted."""
    try:
        if value.replace(".", "", 1).isdigit():
            return float(value)
        return datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise SignatureError(
            f"{ZENDESK_TIMESTAMP} is not an ISO 8601 time: {value[:40]!r}", ZENDESK_TIMESTAMP
        ) from exc


def verify_zendesk(request: SignedRequest, secret: str, *, now: float, window_s: float) -> None:
    """``base64(HMAC-SHA256(secret, timestamp + body))``, timestamp within ``window_s``."""
    signature = _required(request, ZENDESK_SIGNATURE)
    timestamp = _required(request, ZENDESK_TIMESTAMP)
    _within(_zendesk_time(timestamp), now, window_s, ZENDESK_TIMESTAMP)
    expected = _hmac_base64(secret.encode(), timestamp.encode() + request.body)
    _same(expected, signature, ZENDESK_SIGNATURE)


# The escapes HubSpot's "Validating requests" page says to decode in the signed URI;
# others (%20, %26, ...) stay as they are (decoding them all refused valid requests).
_HUBSPOT_DECODED = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)


def hubspot_signed_uri(uri: str) -> str:
    """The URI as HubSpot signs it: the escapes of its documented table decoded."""
    return _HUBSPOT_DECODED.sub(lambda match: chr(int(match.group(1), 16)), uri)


def verify_hubspot(request: SignedRequest, secret: str, *, now: float) -> None:
    """Signature v3: ``base64(HMAC-SHA256(secret, method + URI + body + timestamp))``,
    the timestamp in milliseconds and at most 5 minutes old."""
    signature = _required(request, HUBSPOT_SIGNATURE)
    timestamp = _required(request, HUBSPOT_TIMESTAMP)
    if not timestamp.isdigit():
        raise SignatureError(
            f"{HUBSPOT_TIMESTAMP} must be Unix milliseconds, not {timestamp[:40]!r}",
            HUBSPOT_TIMESTAMP,
        )
    _within(int(timestamp) / 1000, now, HUBSPOT_WINDOW_S, HUBSPOT_TIMESTAMP)
    uri = hubspot_signed_uri(request.uri)
    message = request.method.upper().encode() + uri.encode() + request.body + timestamp.encode()
    try:
        _same(_hmac_base64(secret.encode(), message), signature, HUBSPOT_SIGNATURE)
    except SignatureError as exc:  # most often the URI: HubSpot signs the one it called
        raise SignatureError(
            f"{exc}, or another URI than {uri.split('?')[0][:200]!r} (behind a proxy, set "
            "SENTILOOP_WEBHOOK_PUBLIC_URL to the URL HubSpot calls)",
            HUBSPOT_SIGNATURE,
        ) from None


def verify_intercom(request: SignedRequest, secret: str) -> None:
    """``X-Hub-Signature: sha1=<hex HMAC-SHA1(secret, body)>``. Intercom signs no
    timestamp: a replay is told by its notification id (kept in the inbox)."""
    header = _required(request, INTERCOM_SIGNATURE)
    scheme, _, digest = header.partition("=")
    if scheme.strip().lower() != "sha1" or not digest:
        raise SignatureError(
            f"{INTERCOM_SIGNATURE} must read 'sha1=<hex digest>'", INTERCOM_SIGNATURE
        )
    expected = hmac.new(secret.encode(), request.body, hashlib.sha1).hexdigest()
    _same(expected, digest.lower(), INTERCOM_SIGNATURE)


def verify_standard(request: SignedRequest, secret: str) -> None:
    """Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``;
    5-minute window), checked by the ``standardwebhooks`` library."""
    try:
        Webhook(secret).verify(request.body, dict(request.headers), json_parse=False)
    except WebhookVerificationError as exc:
        raise SignatureError(f"webhook-signature refused: {exc}", "webhook-signature") from exc
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        # A malformed signature entry (no "v1,"), bad base64, or a body not UTF-8.
        raise SignatureError(
            f"webhook-signature is malformed: {type(exc).__name__}", "webhook-signature"
        ) from exc
