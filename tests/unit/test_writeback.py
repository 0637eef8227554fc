"""Write-back without a network: the retry delays (backoff with jitter, Retry-After),
the verdict on each answer, and the requests built for each CRM as its API documents
them (checked here against the documented formulas and, for the generic callback,
the standardwebhooks library)."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook

from connectors.writeback import (
    CrmRequest,
    GenericWriteBack,
    HubSpotWriteBack,
    WriteBackError,
    ZendeskWriteBack,
    build_writebacks,
)
from core.settings import Settings
from service.http.writeback import LONGEST_RETRY_S, backoff_s, judge
from storage.outbox import OutboxItem, WriteBack

NOW = 1_764_500_000.0
ZENDESK = "https://acme.zendesk.com"
HOOK = "https://hooks.example.com/sentiment"
SECRET = "whsec_" + base64.b64encode(b"a callback secret of 32 bytes...").decode()


def item(label: str = "negative", ticket: str = "5158", attempts: int = 0) -> OutboxItem:
    return OutboxItem(
        id=7,
        message_id="msg_0123456789abcdef",
        attempts=attempts,
        created_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        write=WriteBack(
            connector="zendesk",
            event_id="cbe4028c-7239-495d-b020-f22348516046",
            external_id=ticket,
            comment_id="10001",
            prediction_id="0190f7d2-aaaa-7bbb-8ccc-123456789abc",
            label=label,
            confidence=0.91,
            model_version="sentiloop-sentiment:abc",
            template_version="v2",
        ),
    )


def zendesk(**options: object) -> ZendeskWriteBack:
    settings: dict[str, object] = {
        "email": "bot@acme.test",
        "api_token": "zd-t0ken",
        "tag_prefix": "sentiment_",
        "remove_other_tags": True,
        "custom_field_id": None,
    }
    return ZendeskWriteBack("https://acme.zendesk.com/", **{**settings, **options})  # type: ignore[arg-type]


# Delays


def test_backoff_doubles_per_attempt_with_half_of_it_random_and_a_ceiling() -> None:
    assert [backoff_s(n, 5.0, rng=lambda: 0.0) for n in (1, 2, 3, 4)] == [2.5, 5.0, 10.0, 20.0]
    assert [backoff_s(n, 5.0, rng=lambda: 1.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff_s(30, 5.0, rng=lambda: 1.0) == LONGEST_RETRY_S
    # Rows failed together spread out rather than retry together.
    delays = {backoff_s(3, 5.0) for _ in range(50)}
    assert len(delays) > 40 and all(10.0 <= d <= 20.0 for d in delays)


def answer(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"error": "x"})


REQUEST = CrmRequest("PUT", "https://acme.zendesk.com/api/v2/tickets/5158/tags?x=1", b"{}", {})


@pytest.mark.parametrize(
    ("status", "headers", "retry_in_s", "pause_s"),
    [
        (429, {"Retry-After": "7"}, 7.0, 7.0),  # the CRM's delay, and the connector paused
        (503, {"Retry-After": "12"}, 12.0, 12.0),
        (429, {}, 10.0, 10.0),  # no Retry-After: backoff (attempt 2, rng 1: 5 s * 2)
        (503, {}, 10.0, None),
        (500, {"Retry-After": "99"}, 10.0, None),  # Retry-After counts on 429 and 503 only
        (502, {}, 10.0, None),
        (408, {}, 10.0, None),
        (429, {"Retry-After": "86400"}, LONGEST_RETRY_S, LONGEST_RETRY_S),
    ],
)
def test_retried_answers_wait_for_retry_after_or_the_backoff(
    status: int, headers: dict[str, str], retry_in_s: float, pause_s: float | None
) -> None:
    verdict = judge(
        answer(status, headers), REQUEST, attempts=2, base_s=5.0, now=NOW, rng=lambda: 1.0
    )
    assert not verdict.sent and verdict.status == status
    assert (verdict.retry_in_s, verdict.pause_s) == (retry_in_s, pause_s)
    # The message names the request without its query, and the answer.
    assert verdict.error.startswith(
        f"PUT https://acme.zendesk.com/api/v2/tickets/5158/tags: HTTP {status}"
    )


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_answers_that_a_retry_would_get_again_are_dead_at_once(status: int) -> None:
    verdict = judge(answer(status), REQUEST, attempts=1, base_s=5.0, now=NOW)
    assert (verdict.sent, verdict.retry_in_s, verdict.status) == (False, None, status)


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_sent(status: int) -> None:
    assert judge(httpx.Response(status), REQUEST, attempts=1, base_s=5.0, now=NOW).sent


# Payloads


def test_zendesk_adds_the_label_tag_and_removes_only_the_other_label_tags() -> None:
    add, remove = zendesk().requests(item("negative"), now=NOW)
    credentials = base64.b64encode(b"bot@acme.test/token:zd-t0ken").decode()
    for request in (add, remove):
        assert request.url == "https://acme.zendesk.com/api/v2/tickets/5158/tags"
        assert request.headers == {
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/json",
        }
    # PUT adds (POST would replace every tag on the ticket).
    assert (add.method, json.loads(add.body)) == ("PUT", {"tags": ["sentiment_negative"]})
    assert (remove.method, json.loads(remove.body)) == (
        "DELETE",
        {"tags": ["sentiment_neutral", "sentiment_positive"]},
    )


def test_zendesk_custom_field_and_options() -> None:
    [add, field] = zendesk(
        remove_other_tags=False, custom_field_id=360001, tag_prefix="ai:"
    ).requests(item("positive"), now=NOW)
    assert json.loads(add.body) == {"tags": ["ai:positive"]}
    assert (field.method, field.url) == ("PUT", "https://acme.zendesk.com/api/v2/tickets/5158")
    assert json.loads(field.body) == {
        "ticket": {"custom_fields": [{"id": 360001, "value": "positive"}]}
    }


def test_zendesk_refuses_a_ticket_id_that_is_not_a_number() -> None:
    with pytest.raises(WriteBackError, match="numbers"):
        zendesk().requests(item(ticket="../users/1"), now=NOW)


def test_hubspot_sets_the_ticket_property_with_the_bearer_token() -> None:
    target = HubSpotWriteBack(
        "https://api.hubapi.com", token="pat-na1-secret", property_name="sentiloop_sentiment"
    )
    [request] = target.requests(item("neutral", ticket="16491/x"), now=NOW)
    assert (request.method, request.url) == (
        "PATCH",
        "https://api.hubapi.com/crm/v3/objects/tickets/16491%2Fx",  # one path segment
    )
    assert request.headers == {
        "Authorization": "Bearer pat-na1-secret",
        "Content-Type": "application/json",
    }
    assert json.loads(request.body) == {"properties": {"sentiloop_sentiment": "neutral"}}


def test_generic_callback_is_signed_with_standard_webhooks_and_keeps_its_id() -> None:
    target = GenericWriteBack("https://hooks.example.com/sentiment", secret=SECRET)
    [first] = target.requests(item(), now=NOW)
    [retry] = target.requests(item(attempts=1), now=NOW + 90)
    receiver = Webhook(SECRET)
    for request, sent_at in ((first, NOW), (retry, NOW + 90)):
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["webhook-id"] == "msg_0123456789abcdef"  # the idempotency key
        assert request.headers["webhook-timestamp"] == str(int(sent_at))  # signed anew
        expected = receiver.sign(
            "msg_0123456789abcdef", datetime.fromtimestamp(sent_at, UTC), request.body.decode()
        )
        assert request.headers["webhook-signature"] == expected
    body = json.loads(first.body)
    assert body["type"] == "sentiment.scored" and body["timestamp"] == "2026-12-01T09:30:00Z"
    assert body["data"] == {
        "external_id": "5158",
        "event_id": "cbe4028c-7239-495d-b020-f22348516046",
        "comment_id": "10001",
        "prediction_id": "0190f7d2-aaaa-7bbb-8ccc-123456789abc",
        "label": "negative",
        "confidence": 0.91,
        "model_version": "sentiloop-sentiment:abc",
        "template_version": "v2",
    }
    # A live check by the library a receiver uses (its own clock: signed now).
    [live] = target.requests(item(), now=time.time())
    receiver.verify(live.body, dict(live.headers), json_parse=False)


def test_requests_never_show_their_credentials() -> None:
    [add, _] = zendesk().requests(item(), now=NOW)
    assert "zd-t0ken" not in repr(add) and "Basic" not in repr(add)
    assert add.where == "PUT https://acme.zendesk.com/api/v2/tickets/5158/tags"
    settings = Settings(
        writeback_zendesk_api_token=SecretStr("zd-t0ken"),
        writeback_hubspot_token=SecretStr("pat-na1-secret"),
        writeback_generic_secret=SecretStr(SECRET),
    )
    shown = repr(settings) + str(settings.model_dump())
    assert "zd-t0ken" not in shown and "pat-na1-secret" not in shown and SECRET not in shown


# Settings


def test_write_back_is_off_until_a_connector_target_is_set() -> None:
    assert build_writebacks(Settings()) == {}
    targets = build_writebacks(
        Settings(
            writeback_zendesk_url="https://acme.zendesk.com",
            writeback_zendesk_email="bot@acme.test",
            writeback_zendesk_api_token=SecretStr("t"),
            writeback_hubspot_token=SecretStr("pat"),
            writeback_generic_url="http://127.0.0.1:8080/hook",
            writeback_generic_secret=SecretStr(SECRET),
        )
    )
    assert {name: target.coalesce for name, target in targets.items()} == {
        "zendesk": True,  # a state: the newest label wins
        "hubspot": True,
        "generic": False,  # events: each is sent
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"writeback_zendesk_url": ZENDESK}, "SENTILOOP_WRITEBACK_ZENDESK_API_TOKEN"),
        (
            {"writeback_zendesk_url": ZENDESK, "writeback_zendesk_api_token": SecretStr("t")},
            "SENTILOOP_WRITEBACK_ZENDESK_EMAIL",
        ),
        (
            {"writeback_zendesk_url": "http://acme.zendesk.com", "writeback_zendesk_email": "e",
             "writeback_zendesk_api_token": SecretStr("t")},
            "must be https",
        ),
        ({"writeback_generic_url": HOOK}, "SENTILOOP_WRITEBACK_GENERIC_SECRET"),
        (
            {"writeback_generic_url": HOOK, "writeback_generic_secret": SecretStr("whsec_!!!")},
            "not a Standard Webhooks secret",
        ),
        ({"writeback_hubspot_token": SecretStr("pat"), "writeback_hubspot_url": "ftp://x"},
         "http(s) URL"),
    ],
)  # fmt: skip
def test_a_target_without_what_it_needs_fails_at_start(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_writebacks(Settings(**settings))  # type: ignore[arg-type]
