"""The salesforce connector against outbound messages shaped as Salesforce documents
them, its shared-token and org checks, and XML that must not be parsed.

Sources of the samples:
- the message: "Understanding the Outbound Messaging WSDL"
  (https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging_wsdl.htm):
  ``notifications`` with OrganizationId, ActionId, SessionId (nillable), EnterpriseUrl,
  PartnerUrl and up to 100 ``Notification`` elements, each an ``Id`` and an ``sObject``
  of ``xsi:type`` ``sf:<type>`` whose fields are in urn:sobject.enterprise.soap.sforce.com;
- the acknowledgement: the same page's ``notificationsResponse`` with ``Ack``;
- the checks: "Considerations for Security"
  (https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging_security.htm):
  the org id is in every message, and the listener should check it;
- repeats: "Understanding Notifications": a message may be delivered more than once,
  told by its notification ids.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import pytest
from pydantic import SecretStr, ValidationError

from connectors import OriginRefused, PayloadError, SignatureError, SignedRequest, build_connectors
from connectors.salesforce import OUTBOUND, SalesforceConnector, read_message
from core.settings import SalesforceObject, Settings
from service.http.webhooks import SALESFORCE_ACK, _error

ORG_ID = "00D5e000000KQ2eEAG"  # 18 characters, as messages carry it
TOKEN = "kq5Yc1bXw8p2L0tZr7mN4vS9dF6hJ3gA"
URI = f"https://sentiloop.example.com/v1/webhooks/salesforce?token={TOKEN}"


def outbound_message(
    records: list[dict[str, Any]] | None = None,
    *,
    organization_id: str = ORG_ID,
    sobject_type: str = "Case",
) -> bytes:
    """An outbound message as Salesforce sends it: one Notification per record; a
    field whose value is None is sent as xsi:nil, as Salesforce sends empty fields."""
    if records is None:
        records = [
            {
                "notification": "04l5e00000Gx7QzAAJ",
                "Id": "5005e00000abcDEAAY",
                "CaseNumber": "00001026",
                "Subject": "Refund still missing",
                "Description": "I returned the blender three weeks ago. Nobody answers.",
            }
        ]
    notifications = []
    for record in records:
        fields = "".join(
            f'<sf:{name} xsi:nil="true"/>'
            if value is None
            else f"<sf:{name}>{escape(str(value))}</sf:{name}>"
            for name, value in record.items()
            if name != "notification"
        )
        notifications.append(
            f"<Notification><Id>{record['notification']}</Id>"
            f'<sObject xsi:type="sf:{sobject_type}" '
            f'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{fields}</sObject>'
            "</Notification>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body>"
        '<notifications xmlns="http://soap.sforce.com/2005/09/outbound">'
        f"<OrganizationId>{organization_id}</OrganizationId>"
        "<ActionId>04k5e000000CaRkAAK</ActionId>"
        '<SessionId xsi:nil="true"/>'
        "<EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/61.0/00D5e000000KQ2e"
        "</EnterpriseUrl>"
        "<PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/61.0/00D5e000000KQ2e"
        "</PartnerUrl>"
        + "".join(notifications)
        + "</notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


def connector(**objects: SalesforceObject) -> SalesforceConnector:
    return SalesforceConnector(
        TOKEN, organization_id=ORG_ID, objects=objects or {"Case": SalesforceObject()}
    )


def request(body: bytes, uri: str = URI) -> SignedRequest:
    return SignedRequest("POST", uri, {"content-type": "text/xml; charset=utf-8"}, body)


def test_a_case_is_scored_as_its_subject_and_description_under_its_id() -> None:
    body = outbound_message()
    connector().verify(request(body), now=0)
    delivery = connector().parse(connector().decode(body), request(body))
    [event] = delivery.events
    assert (event.event_id, event.event_type, event.external_id) == (
        "04l5e00000Gx7QzAAJ",
        "Case",
        "5005e00000abcDEAAY",
    )
    assert event.text == (
        "Refund still missing\nI returned the blender three weeks ago. Nobody answers."
    )
    assert delivery.ignored == [] and delivery.feedback == []


def test_the_mapping_picks_fields_and_other_types_are_acknowledged() -> None:
    mapped = connector(
        Case=SalesforceObject(
            text=["Description"], external_id="CaseNumber", language="Language__c"
        )
    )
    records: list[dict[str, Any]] = [
        {
            "notification": "04l5e00000Gx7Qz001",
            "Id": "5005e00000abcDEAAY",
            "CaseNumber": "00001026",
            "Description": "Das Paket kam beschädigt an.",
            "Language__c": "de_DE",
        },
        # Salesforce sends an empty field as xsi:nil: nothing to score.
        {"notification": "04l5e00000Gx7Qz002", "Id": "5005e0000", "Description": None},
    ]
    body = outbound_message(records)
    delivery = mapped.parse(mapped.decode(body), request(body))
    [event] = delivery.events
    assert (event.external_id, event.text, event.language) == (
        "00001026",
        "Das Paket kam beschädigt an.",
        "de",
    )
    assert delivery.ignored == ["Case"]
    lead = outbound_message(sobject_type="Lead")
    assert mapped.parse(mapped.decode(lead), request(lead)).ignored == ["Lead"]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://sentiloop.example.com/v1/webhooks/salesforce", "missing token"),
        (f"{URI[: -len(TOKEN)]}{'x' * len(TOKEN)}", "does not match"),
        (f"{URI}&token=another", "does not match"),  # two tokens: refused, not either
    ],
    ids=["missing", "wrong", "twice"],
)
def test_a_message_without_the_token_is_refused(uri: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message) as refused:
        connector().verify(request(outbound_message(), uri), now=0)
    assert refused.value.field == "token"
    assert TOKEN not in str(refused.value)  # the token is never echoed


def test_a_message_of_another_org_is_refused_and_ids_of_15_characters_match() -> None:
    other = outbound_message(organization_id="00D5e000000ZZZZEAG")
    with pytest.raises(OriginRefused) as refused:
        connector().parse(connector().decode(other), request(other))
    assert refused.value.field == "OrganizationId"
    # An org id given in its 15-character form names the same org.
    short = SalesforceConnector(
        TOKEN, organization_id=ORG_ID[:15], objects={"Case": SalesforceObject()}
    )
    body = outbound_message()
    assert len(short.parse(short.decode(body), request(body)).events) == 1
    # The 15 characters are case-sensitive: another case is another org.
    swapped = outbound_message(organization_id=ORG_ID[:12] + ORG_ID[12:15].lower() + "EAG")
    with pytest.raises(OriginRefused):
        short.parse(short.decode(swapped), request(swapped))


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound">
<OrganizationId>&lol3;</OrganizationId></notifications></soapenv:Body></soapenv:Envelope>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE e [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound">
<OrganizationId>&secret;</OrganizationId></notifications></soapenv:Body></soapenv:Envelope>"""


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (BILLION_LAUGHS, "body", "DTD"),
        (EXTERNAL_ENTITY, "body", "DTD"),
        (b"<soapenv:Envelope", "body", "not well-formed"),
        (b'{"json": true}', "body", "not well-formed"),
        (b"<html><body/></html>", "body", "not a SOAP 1.1 envelope"),
        (outbound_message().replace(b"notifications", b"other"), "notifications", "outbound"),
        (
            outbound_message().replace(b"<Id>04l5e00000Gx7QzAAJ</Id>", b""),
            "Notification[0].Id",
            "missing",
        ),
        (
            outbound_message().replace(b' xsi:type="sf:Case"', b""),
            "Notification[0].sObject",
            "xsi:type",
        ),
        (outbound_message(organization_id=""), "OrganizationId", "missing"),
    ],
    ids=[
        "billion-laughs",
        "external-entity",
        "truncated",
        "json",
        "not-soap",
        "no-notifications",
        "no-notification-id",
        "no-sobject-type",
        "no-org",
    ],
)
def test_unreadable_or_unsafe_bodies_are_refused_naming_the_element(
    body: bytes, field: str, message: str
) -> None:
    with pytest.raises(PayloadError, match=message) as refused:
        read_message(body)
    assert refused.value.field == field


def test_at_most_100_notifications() -> None:
    records = [
        {"notification": f"04l5e00000Gx{index:06d}", "Id": f"500{index}", "Subject": "Hi"}
        for index in range(101)
    ]
    with pytest.raises(PayloadError, match="at most 100"):
        read_message(outbound_message(records))
    assert len(read_message(outbound_message(records[:100])).notifications) == 100


def test_the_answer_is_the_acknowledgement_the_wsdl_defines() -> None:
    root = ElementTree.fromstring(SALESFORCE_ACK)
    ack = root.find(
        f"{{http://schemas.xmlsoap.org/soap/envelope/}}Body/{{{OUTBOUND}}}notificationsResponse"
        f"/{{{OUTBOUND}}}Ack"
    )
    assert ack is not None and ack.text == "true"
    fault = _error(401, "the token does not match <&>", "token", soap=True)
    assert (fault.status_code, fault.media_type) == (401, "text/xml; charset=utf-8")
    faultstring = ElementTree.fromstring(fault.body).findtext(".//faultstring")
    assert faultstring == "the token does not match <&> (field: token)"


def test_the_connector_is_off_without_a_token_and_needs_an_org_with_one() -> None:
    assert build_connectors(Settings())["salesforce"].secret is None
    with pytest.raises(ValueError, match="SENTILOOP_WEBHOOK_SALESFORCE_ORGANIZATION_ID"):
        build_connectors(Settings(webhook_secret_salesforce=SecretStr(TOKEN)))
    built = build_connectors(
        Settings(
            webhook_secret_salesforce=SecretStr(TOKEN),
            webhook_salesforce_organization_id=ORG_ID,
        )
    )
    assert built["salesforce"].secret == TOKEN and built["salesforce"].soap
    with pytest.raises(ValidationError, match="shorter than 32 characters"):
        Settings(webhook_secret_salesforce=SecretStr("short-token"))
    with pytest.raises(ValidationError, match="webhook_salesforce_organization_id"):
        Settings(webhook_salesforce_organization_id="not-an-org-id")
