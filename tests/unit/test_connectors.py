"""Each CRM's signature scheme against signatures computed here from its documented
formula (and, for the generic connector, by the standardwebhooks library), and each
connector's reading of payloads shaped as the CRM documents them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook

from connectors import PayloadError, SignatureError, SignedRequest, build_connectors, jsonpath
from connectors.generic import GenericConnector
from connectors.hubspot import HubSpotConnector
from connectors.intercom import IntercomConnector
from connectors.zendesk import COMMENT_ADDED, ZendeskConnector
from core.settings import GenericMapping, Settings
from service.http.guard import required_scope

NOW = 1_764_500_000.0  # 2025-11-30T10:53:20Z
SECRET = "dGhpcyBpcyBhIHNlY3JldA=="


def zendesk_event(
    event_type: str = COMMENT_ADDED, body: str = "The parcel arrived broken."
) -> dict[str, Any]:
    """A ticket.comment_added event as Zendesk's "Ticket events" reference shows it."""
    return {
        "account_id": 22129848,
        "detail": {"id": "5158", "subject": "Damaged parcel", "status": "OPEN", "via": {}},
        "event": {
            "comment": {
                "author": {"id": "8447388090494", "is_staff": False, "name": "Jo"},
                "body": body,
                "id": "10001",
                "is_public": True,
            }
        },
        "id": "cbe4028c-7239-495d-b020-f22348516046",
        "subject": "zen:ticket:5158",
        "time": "2025-11-30T10:53:19.672717030Z",
        "type": event_type,
        "zendesk_event_version": "2022-11-06",
    }


def zendesk_request(body: bytes, *, secret: str = SECRET, sent_at: float = NOW) -> SignedRequest:
    timestamp = datetime.fromtimestamp(sent_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return SignedRequest(
        method="POST",
        uri="https://sentiloop.example.com/v1/webhooks/zendesk",
        headers={
            "x-zendesk-webhook-signature": base64.b64encode(digest).decode(),
            "x-zendesk-webhook-signature-timestamp": timestamp,
        },
        body=body,
    )


def zendesk() -> ZendeskConnector:
    return ZendeskConnector(SECRET, window_s=300)


def test_zendesk_signature_of_timestamp_and_body_is_accepted() -> None:
    body = json.dumps(zendesk_event()).encode()
    request = zendesk_request(body)
    zendesk().verify(request, now=NOW)
    delivery = zendesk().parse(json.loads(body), request)
    [event] = delivery.events
    assert (event.event_id, event.external_id, event.text) == (
        "cbe4028c-7239-495d-b020-f22348516046",
        "5158",
        "The parcel arrived broken.",
    )
    assert (event.comment_id, event.author, event.language) == ("10001", "8447388090494", None)


@pytest.mark.parametrize(
    ("request_of", "field"),
    [
        # Another secret signed it.
        (lambda body: zendesk_request(body, secret="another"), "X-Zendesk-Webhook-Signature"),
        # The body was changed after signing.
        (
            lambda body: SignedRequest(
                "POST", "u", zendesk_request(body).headers, body.replace(b"broken", b"fine!!")
            ),
            "X-Zendesk-Webhook-Signature",
        ),
        # Signed 301 s before now: beyond the 300 s window.
        (
            lambda body: zendesk_request(body, sent_at=NOW - 301),
            "X-Zendesk-Webhook-Signature-Timestamp",
        ),
        (
            lambda body: zendesk_request(body, sent_at=NOW + 301),
            "X-Zendesk-Webhook-Signature-Timestamp",
        ),
        (lambda body: SignedRequest("POST", "u", {}, body), "X-Zendesk-Webhook-Signature"),
    ],
    ids=["wrong-secret", "altered-body", "old-timestamp", "future-timestamp", "unsigned"],
)
def test_zendesk_refuses(request_of: Any, field: str) -> None:
    body = json.dumps(zendesk_event()).encode()
    with pytest.raises(SignatureError) as refused:
        zendesk().verify(request_of(body), now=NOW)
    assert refused.value.field == field


def test_zendesk_other_events_are_acknowledged_not_scored() -> None:
    payload = zendesk_event(event_type="zen:event-type:ticket.priority_changed")
    delivery = zendesk().parse(payload, zendesk_request(b""))
    assert delivery.events == [] and delivery.ignored == ["zen:event-type:ticket.priority_changed"]
    assert zendesk().parse(zendesk_event(body="  "), zendesk_request(b"")).events == []


def test_zendesk_comments_of_agents_are_acknowledged_not_scored() -> None:
    """An agent's reply ("So sorry! Happy to help") is not the customer's sentiment:
    scored, it would replace the ticket's label and its tag moments later."""
    payload = zendesk_event(body="So sorry to hear that! Happy to help, have a great day.")
    payload["event"]["comment"]["author"]["is_staff"] = True
    delivery = zendesk().parse(payload, zendesk_request(b""))
    assert delivery.events == [] and delivery.ignored == [COMMENT_ADDED]


def test_zendesk_payload_errors_name_the_field() -> None:
    payload = zendesk_event()
    del payload["detail"]["id"]
    with pytest.raises(PayloadError) as refused:
        zendesk().parse(payload, zendesk_request(b""))
    assert refused.value.field == "detail.id"
    with pytest.raises(PayloadError) as refused:
        zendesk().parse([], zendesk_request(b""))
    assert refused.value.field == "body"


HUBSPOT_URI = "https://sentiloop.example.com/v1/webhooks/hubspot?app=crm%3Aeu&label=a%20b"


def hubspot_events() -> list[dict[str, Any]]:
    """Events as HubSpot's webhooks API sends them (one request, several events)."""
    common = {
        "subscriptionId": 1234,
        "portalId": 62515,
        "appId": 54321,
        "attemptNumber": 0,
        "changeSource": "CRM_UI",
        "sourceId": "userId:45678",
    }
    return [
        {
            **common,
            "eventId": 100,
            "occurredAt": 1764499999000,
            "objectId": 1246965,
            "subscriptionType": "ticket.propertyChange",
            "propertyName": "content",
            "propertyValue": "Nobody answers my calls, this is terrible.",
        },
        {
            **common,
            "eventId": 101,
            "occurredAt": 1764499999001,
            "objectId": 1246965,
            "subscriptionType": "ticket.propertyChange",
            "propertyName": "hs_pipeline_stage",
            "propertyValue": "2",
        },
        {
            **common,
            "eventId": 102,
            "occurredAt": 1764499999002,
            "objectId": 77,
            "subscriptionType": "contact.creation",
        },
    ]


def hubspot_request(
    body: bytes, *, secret: str = SECRET, sent_at: float = NOW, method: str = "POST"
) -> SignedRequest:
    timestamp = str(int(sent_at * 1000))
    # HubSpot's v3 formula: method + URI + body + timestamp, the URI with the escapes
    # of its documented table decoded (%3A is; %20 is not in the table and stays).
    uri = HUBSPOT_URI.replace("%3A", ":")
    signed = b"POST" + uri.encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return SignedRequest(
        method=method,
        uri=HUBSPOT_URI,
        headers={
            "x-hubspot-signature-v3": base64.b64encode(digest).decode(),
            "x-hubspot-request-timestamp": timestamp,
        },
        body=body,
    )


def hubspot() -> HubSpotConnector:
    return HubSpotConnector(SECRET, text_properties=["content"])


def test_hubspot_v3_signature_is_accepted_and_text_changes_are_scored() -> None:
    body = json.dumps(hubspot_events()).encode()
    request = hubspot_request(body)
    hubspot().verify(request, now=NOW)
    delivery = hubspot().parse(json.loads(body), request)
    [event] = delivery.events
    assert event.external_id == "1246965" and event.text.startswith("Nobody answers")
    assert event.event_id == "62515-1234-1246965-100-1764499999000"
    assert event.author == "userId:45678"
    assert delivery.ignored == ["ticket.propertyChange", "contact.creation"]


@pytest.mark.parametrize(
    ("request_of", "field"),
    [
        (lambda body: hubspot_request(body, secret="another"), "X-HubSpot-Signature-v3"),
        (lambda body: hubspot_request(body, method="PUT"), "X-HubSpot-Signature-v3"),
        # HubSpot's window: 5 minutes.
        (lambda body: hubspot_request(body, sent_at=NOW - 301), "X-HubSpot-Request-Timestamp"),
        (lambda body: SignedRequest("POST", HUBSPOT_URI, {}, body), "X-HubSpot-Signature-v3"),
    ],
    ids=["wrong-secret", "other-method", "old-timestamp", "unsigned"],
)
def test_hubspot_refuses(request_of: Any, field: str) -> None:
    body = json.dumps(hubspot_events()).encode()
    with pytest.raises(SignatureError) as refused:
        hubspot().verify(request_of(body), now=NOW)
    assert refused.value.field == field


def test_hubspot_refusal_of_another_uri_names_the_public_url_setting() -> None:
    """Behind a TLS proxy the URI seen here (http://10.0.0.5...) is not the one HubSpot
    signed: the refusal says which URI was checked and which setting fixes it."""
    body = json.dumps(hubspot_events()).encode()
    signed = hubspot_request(body)
    behind_proxy = SignedRequest(
        "POST", "http://10.0.0.5:3000/v1/webhooks/hubspot", signed.headers, body
    )
    with pytest.raises(SignatureError) as refused:
        hubspot().verify(behind_proxy, now=NOW)
    assert "'http://10.0.0.5:3000/v1/webhooks/hubspot'" in str(refused.value)
    assert "SENTILOOP_WEBHOOK_PUBLIC_URL" in str(refused.value)


def test_hubspot_accepts_a_timestamp_just_inside_its_window() -> None:
    body = json.dumps(hubspot_events()).encode()
    hubspot().verify(hubspot_request(body, sent_at=NOW - 299), now=NOW)


def intercom_notification(topic: str = "conversation.user.replied") -> dict[str, Any]:
    """A notification as Intercom's webhook models show it."""
    return {
        "type": "notification_event",
        "app_id": "abc123",
        "id": "notif_ccd8a4d2-4e29-4b4a-8f0f-4c9e8b9e1234",
        "topic": topic,
        "delivery_status": "pending",
        "delivery_attempts": 1,
        "first_sent_at": 1764499999,
        "created_at": 1764499999,
        "data": {
            "type": "notification_event_data",
            "item": {
                "type": "conversation",
                "id": "147",
                "source": {
                    "id": "403",
                    "body": "<p>Hello, my order is late.</p>",
                    "author": {"type": "user", "id": "5f1a"},
                },
                "conversation_parts": {
                    "type": "conversation_part.list",
                    "conversation_parts": [
                        {
                            "id": "9900",
                            "part_type": "comment",
                            "body": "<p>Sorry!</p>",
                            "author": {"type": "admin", "id": "814"},
                        },
                        {
                            "id": "9901",
                            "part_type": "comment",
                            "body": "<p>Still nothing.<br>This is <b>awful</b> &amp; slow.</p>",
                            "author": {"type": "user", "id": "5f1a"},
                        },
                    ],
                },
            },
        },
    }


def intercom_request(body: bytes, secret: str = SECRET) -> SignedRequest:
    digest = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return SignedRequest("POST", "u", {"x-hub-signature": f"sha1={digest}"}, body)


def test_intercom_sha1_signature_is_accepted_and_the_users_reply_scored() -> None:
    body = json.dumps(intercom_notification()).encode()
    request = intercom_request(body)
    IntercomConnector(SECRET).verify(request, now=NOW)
    [event] = IntercomConnector(SECRET).parse(json.loads(body), request).events
    assert (event.external_id, event.comment_id, event.author) == ("147", "9901", "5f1a")
    assert event.text == "Still nothing. This is awful & slow."
    [created] = (
        IntercomConnector(SECRET)
        .parse(intercom_notification("conversation.user.created"), request)
        .events
    )
    assert (created.text, created.comment_id) == ("Hello, my order is late.", "403")
    ping = IntercomConnector(SECRET).parse(intercom_notification("ping"), request)
    assert ping.events == [] and ping.ignored == ["ping"]


@pytest.mark.parametrize(
    "headers",
    [{"x-hub-signature": "sha1=" + "0" * 40}, {"x-hub-signature": "md5=abc"}, {}],
    ids=["wrong", "malformed", "unsigned"],
)
def test_intercom_refuses(headers: dict[str, str]) -> None:
    body = json.dumps(intercom_notification()).encode()
    with pytest.raises(SignatureError):
        IntercomConnector(SECRET).verify(SignedRequest("POST", "u", headers, body), now=NOW)
    with pytest.raises(SignatureError):
        IntercomConnector(SECRET).verify(intercom_request(body, "another"), now=NOW)


GENERIC_SECRET = "whsec_" + base64.b64encode(b"a generic secret of 32 bytes....").decode()
MAPPING = GenericMapping(
    text="$.data.message.text",
    external_id="$.data.ticket['id']",
    language="$.data.locale",
    comment_id="$.data.message.id",
    author="$.data.message.author",
    event_type="$.type",
    event_types=["message.created"],
)


def generic_request(
    payload: dict[str, Any], *, secret: str = GENERIC_SECRET, sent_at: datetime | None = None
) -> SignedRequest:
    body = json.dumps(payload)
    sent_at = sent_at or datetime.now(UTC)
    signature = Webhook(secret).sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", sent_at, body)
    headers = {
        "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature,
    }
    return SignedRequest("POST", "u", headers, body.encode())


def generic_payload(event_type: str = "message.created") -> dict[str, Any]:
    return {
        "type": event_type,
        "data": {
            "ticket": {"id": 42},
            "locale": "de-DE",
            "message": {"id": "m-1", "author": "u-9", "text": "Alles bestens, danke!"},
        },
    }


def test_generic_standard_webhooks_signature_and_json_path_mapping() -> None:
    connector = GenericConnector(GENERIC_SECRET, MAPPING)
    request = generic_request(generic_payload())
    connector.verify(request, now=time.time())
    [event] = connector.parse(json.loads(request.body), request).events
    assert (event.event_id, event.external_id, event.text) == (
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        "42",
        "Alles bestens, danke!",
    )
    assert (event.language, event.comment_id, event.author) == ("de", "m-1", "u-9")
    other = connector.parse(generic_payload("message.deleted"), request)
    assert other.events == [] and other.ignored == ["message.deleted"]


@pytest.mark.parametrize(
    "request_of",
    [
        lambda: generic_request(
            generic_payload(), secret="whsec_" + base64.b64encode(b"x" * 32).decode()
        ),
        lambda: generic_request(
            generic_payload(), sent_at=datetime.fromtimestamp(time.time() - 400, UTC)
        ),
        lambda: SignedRequest(
            "POST",
            "u",
            {**generic_request(generic_payload()).headers, "webhook-signature": "v1"},
            b"{}",
        ),
        lambda: SignedRequest("POST", "u", {}, b"{}"),
    ],
    ids=["wrong-secret", "old-timestamp", "malformed", "unsigned"],
)
def test_generic_refuses(request_of: Any) -> None:
    with pytest.raises(SignatureError) as refused:
        GenericConnector(GENERIC_SECRET, MAPPING).verify(request_of(), now=time.time())
    assert refused.value.field == "webhook-signature"


def test_jsonpath_selects_single_values_and_refuses_other_queries() -> None:
    document = {"a": {"b": [{"c": 1}, {"c": 2}], "d-e": "x"}}
    assert jsonpath.select(document, "$.a.b[1].c") == 2
    assert jsonpath.select(document, "$.a.b[-1]['c']") == 2
    assert jsonpath.select(document, "$.a.d-e") == "x"
    assert jsonpath.select(document, "$.a.missing.c") is None
    assert jsonpath.select(document, "$.a.b[5]") is None
    for bad in ("a.b", "$.a[*]", "$..c"):
        with pytest.raises(jsonpath.JsonPathError):
            jsonpath.parse(bad)


def test_connectors_without_a_secret_are_built_unsigned() -> None:
    built = build_connectors(Settings(webhook_secret_zendesk=SecretStr(SECRET)))
    assert built["zendesk"].secret == SECRET
    assert all(built[name].secret is None for name in ("hubspot", "intercom", "generic"))


def test_unsigned_webhooks_are_refused_where_authentication_is_required() -> None:
    with pytest.raises(ValueError, match="SENTILOOP_WEBHOOK_ALLOW_UNSIGNED"):
        build_connectors(Settings(webhook_allow_unsigned=True, auth="required"))
    with pytest.raises(ValueError, match="SENTILOOP_WEBHOOK_ALLOW_UNSIGNED"):
        build_connectors(
            Settings(webhook_allow_unsigned=True, database_url="postgresql+psycopg://h/db")
        )
    assert build_connectors(Settings(webhook_allow_unsigned=True, auth="disabled"))


def test_webhooks_need_no_api_key_their_signature_is_the_credential() -> None:
    assert required_scope("/v1/webhooks/zendesk") is None
    assert required_scope("/v1/predict") == "predict"
