"""CRM signals read as feedback (``SENTILOOP_WEBHOOK_FEEDBACK``): which events a rule
maps, what they map to, what is left as it was, and the rules refused at start.

Payload sources:
- Zendesk triggers send the JSON body the admin writes, with the webhook's signature
  and an ``x-zendesk-webhook-invocation-id`` header ("Anatomy of a webhook request",
  https://developer.zendesk.com/documentation/webhooks/anatomy-of-a-webhook-request/);
  the satisfaction scores are ``good`` and ``bad`` (the Satisfaction Ratings API,
  https://developer.zendesk.com/api-reference/ticketing/ticket-management/satisfaction_ratings/).
- HubSpot's ``ticket.propertyChange`` events as in ``test_connectors`` (the Webhooks
  API, https://developers.hubspot.com/docs/api/webhooks).
- Salesforce outbound messages as in ``test_salesforce_connector``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from connectors import PayloadError, SignatureError, SignedRequest, build_connectors
from connectors.feedback import FeedbackReader
from connectors.zendesk import ZendeskConnector
from core.settings import FeedbackRule, SalesforceObject, Settings
from tests.unit.test_connectors import (
    SECRET,
    hubspot_events,
    hubspot_request,
    zendesk_event,
    zendesk_request,
)
from tests.unit.test_salesforce_connector import ORG_ID, TOKEN, outbound_message
from tests.unit.test_salesforce_connector import request as salesforce_request

CSAT = {
    "event_type": "satisfaction_rating",
    "value": "$.satisfaction_rating.score",
    "labels": {"bad": "negative", "good": "positive"},
}
CORRECTION = {
    "event_type": "sentiloop.correction",
    "value": "$.label",
    "labels": {"negative": "negative", "neutral": "neutral", "positive": "positive"},
}


def connectors(**rules: list[dict[str, Any]]) -> dict[str, Any]:
    return build_connectors(
        Settings(
            webhook_secret_zendesk=SecretStr(SECRET),
            webhook_secret_hubspot=SecretStr(SECRET),
            webhook_feedback={
                name: [FeedbackRule.model_validate(rule) for rule in listed]
                for name, listed in rules.items()
            },
        )
    )


def trigger_request(payload: dict[str, Any], invocation: str | None = "8350205582") -> Any:
    """A Zendesk trigger's delivery: the admin's body, signed, with its invocation id."""
    signed = zendesk_request(json.dumps(payload).encode())
    headers = dict(signed.headers)
    if invocation is not None:
        headers["x-zendesk-webhook-invocation-id"] = invocation
    return SignedRequest(signed.method, signed.uri, headers, signed.body)


def csat_body(score: str, ticket: str = "5158") -> dict[str, Any]:
    """The body the README has a "Satisfaction is Bad/Good" trigger send."""
    return {
        "type": "satisfaction_rating",
        "detail": {"id": ticket},
        "satisfaction_rating": {"score": score},
    }


def test_a_zendesk_csat_trigger_is_feedback_on_its_ticket_by_invocation_id() -> None:
    zendesk = connectors(zendesk=[CSAT])["zendesk"]
    request = trigger_request(csat_body("Bad"))  # any case
    zendesk.verify(request, now=1_764_500_000.0)
    delivery = zendesk.parse(zendesk.decode(request.body), request)
    [feedback] = delivery.feedback
    assert (feedback.event_id, feedback.external_id, feedback.label, feedback.signal) == (
        "8350205582",
        "5158",
        "negative",
        "Bad",
    )
    assert delivery.events == [] and delivery.ignored == []


def test_values_a_rule_does_not_map_leave_the_event_as_it_was() -> None:
    zendesk = connectors(zendesk=[CSAT, CORRECTION])["zendesk"]
    offered = zendesk.parse(csat_body("offered"), trigger_request(csat_body("offered")))
    assert offered.feedback == [] and offered.ignored == ["satisfaction_rating"]
    # Comments are scored as before, rules or not.
    comment = zendesk.parse(zendesk_event(), zendesk_request(b""))
    assert len(comment.events) == 1 and comment.feedback == []
    correction = {"type": "sentiloop.correction", "detail": {"id": "77"}, "label": "Neutral"}
    [feedback] = zendesk.parse(correction, trigger_request(correction, "9")).feedback
    assert (feedback.external_id, feedback.label) == ("77", "neutral")


def test_a_trigger_without_an_event_id_or_a_ticket_is_refused_naming_it() -> None:
    zendesk = connectors(zendesk=[CSAT])["zendesk"]
    with pytest.raises(PayloadError) as refused:
        zendesk.parse(csat_body("bad"), trigger_request(csat_body("bad"), invocation=None))
    assert refused.value.field == "id"
    no_ticket = {"type": "satisfaction_rating", "satisfaction_rating": {"score": "bad"}}
    with pytest.raises(PayloadError) as refused:
        zendesk.parse(no_ticket, trigger_request(no_ticket))
    assert refused.value.field == "$.detail.id"


def test_a_hubspot_property_an_agent_sets_is_feedback_and_text_changes_are_scored() -> None:
    rule = {
        "event_type": "ticket.propertyChange:sentiment_override",
        "value": "$.propertyValue",
        "labels": {"negative": "negative", "neutral": "neutral", "positive": "positive"},
    }
    hubspot = connectors(hubspot=[rule])["hubspot"]
    events = hubspot_events()
    events[1] |= {"propertyName": "sentiment_override", "propertyValue": "neutral"}
    body = json.dumps(events).encode()
    request = hubspot_request(body)
    delivery = hubspot.parse(hubspot.decode(body), request)
    [scored] = delivery.events
    [feedback] = delivery.feedback
    assert scored.external_id == feedback.external_id == "1246965"
    assert (feedback.label, feedback.event_id) == (
        "neutral",
        "62515-1234-1246965-101-1764499999001",
    )
    assert delivery.ignored == ["contact.creation"]
    events[1]["objectId"] = None
    with pytest.raises(PayloadError) as refused:
        hubspot.parse(events, request)
    assert refused.value.field == "[1].objectId"


def test_tags_give_the_one_label_they_agree_on() -> None:
    """A list value (the tags an agent added): one label, or nothing when they disagree."""
    rule = FeedbackRule(
        event_type="tags.added",
        value="$.tags",
        external_id="$.ticket",
        labels={"corrected_negative": "negative", "corrected_positive": "positive"},
    )
    reader = FeedbackReader("generic", [rule], external_id="$.external_id")

    def label(tags: list[Any]) -> str | None:
        found = reader.read(
            event_id="e", event_type="tags.added", document={"ticket": 9, "tags": tags}
        )
        return found.label if found is not None else None

    assert label(["vip", "corrected_negative"]) == "negative"
    assert label(["corrected_negative", "corrected_negative"]) == "negative"
    assert label(["corrected_negative", "corrected_positive"]) is None
    assert label(["vip", 3, None, True]) is None
    assert reader.read(event_id="e", event_type="other", document={"tags": []}) is None


def test_salesforce_feedback_names_the_record_as_its_mapping_does() -> None:
    rule = {
        "event_type": "Case",
        "value": "$.Sentiment_Override__c",
        "labels": {"Negative": "negative", "Positive": "positive"},
    }
    salesforce = build_connectors(
        Settings(
            webhook_secret_salesforce=SecretStr(TOKEN),
            webhook_salesforce_organization_id=ORG_ID,
            webhook_salesforce_objects={"Case": SalesforceObject(external_id="CaseNumber")},
            webhook_feedback={"salesforce": [FeedbackRule.model_validate(rule)]},
        )
    )["salesforce"]
    records = [
        {
            "notification": "04l-1",
            "Id": "500A",
            "CaseNumber": "0001",
            "Sentiment_Override__c": "Negative",
        },
        # No override: the record's text is scored as usual.
        {"notification": "04l-2", "Id": "500B", "CaseNumber": "0002", "Subject": "Thanks!"},
    ]
    body = outbound_message(records)
    delivery = salesforce.parse(salesforce.decode(body), salesforce_request(body))
    [feedback] = delivery.feedback
    [scored] = delivery.events
    assert (feedback.event_id, feedback.external_id, feedback.label) == (
        "04l-1",
        "0001",
        "negative",
    )
    assert (scored.event_id, scored.external_id) == ("04l-2", "0002")


def test_rules_that_cannot_work_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="names no connector"):
        connectors(freshdesk=[CSAT])
    with pytest.raises(ValueError, match=r"SENTILOOP_WEBHOOK_FEEDBACK.zendesk\[0\].value"):
        connectors(zendesk=[{**CSAT, "value": "satisfaction_rating.score"}])
    with pytest.raises(ValidationError):
        FeedbackRule.model_validate({**CSAT, "labels": {}})
    with pytest.raises(ValidationError):
        FeedbackRule.model_validate({**CSAT, "labels": {"bad": "angry"}})


def test_rules_that_read_sentiloops_own_write_back_are_refused() -> None:
    """The tag write-back adds, read back as an agent's correction, would have every
    scored ticket confirm its own label."""
    own_tag = {**CORRECTION, "value": "$.tags", "labels": {"sentiment_neutral": "neutral"}}
    with pytest.raises(ValueError, match="write-back adds itself"):
        build_connectors(
            Settings(
                writeback_zendesk_url="https://acme.zendesk.com",
                webhook_feedback={"zendesk": [FeedbackRule.model_validate(own_tag)]},
            )
        )
    own_property = {
        "event_type": "ticket.propertyChange:sentiloop_sentiment",
        "value": "$.propertyValue",
        "labels": {"negative": "negative"},
    }
    with pytest.raises(ValueError, match="write-back sets itself"):
        build_connectors(
            Settings(
                writeback_hubspot_token=SecretStr("pat-na1-0000"),
                webhook_feedback={"hubspot": [FeedbackRule.model_validate(own_property)]},
            )
        )
    # Without write-back, the same tags are the agents' own.
    assert build_connectors(
        Settings(webhook_feedback={"zendesk": [FeedbackRule.model_validate(own_tag)]})
    )


def test_zendesk_takes_the_secret_of_each_of_its_webhooks() -> None:
    """Zendesk gives every webhook its own secret, and one webhook serves either events
    (comments) or triggers (CSAT): both secrets, comma-separated, are accepted."""
    trigger_secret = "dHJpZ2dlciB3ZWJob29rIHNlY3JldA=="
    zendesk = ZendeskConnector(f"{SECRET}, {trigger_secret}", window_s=300)
    now = 1_764_500_000.0
    body = json.dumps(csat_body("bad")).encode()
    zendesk.verify(zendesk_request(body, secret=trigger_secret), now=now)
    zendesk.verify(zendesk_request(body, secret=SECRET), now=now)
    with pytest.raises(SignatureError) as refused:
        zendesk.verify(zendesk_request(body, secret="another"), now=now)
    assert refused.value.field == "X-Zendesk-Webhook-Signature"
    with pytest.raises(SignatureError) as refused:  # old: refused whichever secret signed it
        zendesk.verify(zendesk_request(body, secret=trigger_secret, sent_at=now - 301), now=now)
    assert refused.value.field == "X-Zendesk-Webhook-Signature-Timestamp"
