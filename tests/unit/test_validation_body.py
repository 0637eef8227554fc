"""service.http.validation: BentoML's validation 400 gets the top-level field."""

from __future__ import annotations

import json

from service.http.validation import name_the_field


def test_the_first_errors_field_and_message_go_to_the_top() -> None:
    body = {
        "error": "2 validation error for the body of POST /v1/predict",
        "detail": [
            {"type": "string_too_short", "loc": ["texts", 0],
             "msg": "String should have at least 1 character"},
            {"type": "extra_forbidden", "loc": ["temperature"],
             "msg": "Extra inputs are not permitted"},
        ],
    }  # fmt: skip
    named = json.loads(name_the_field(json.dumps(body).encode()) or b"null")
    assert named["field"] == "texts.0"
    assert named["error"] == (
        "texts.0: String should have at least 1 character (and 1 more in 'detail')"
    )
    assert named["detail"] == body["detail"]


def test_an_error_of_the_whole_body_names_the_body_without_pydantics_prefix() -> None:
    body = {
        "error": "1 validation error for the body of POST /v1/predict",
        "detail": [{"type": "value_error", "loc": [],
                    "msg": "Value error, give exactly one of 'text' or 'texts'"}],
    }  # fmt: skip
    named = json.loads(name_the_field(json.dumps(body).encode()) or b"null")
    assert (named["field"], named["error"]) == (
        "body",
        "body: give exactly one of 'text' or 'texts'",
    )


def test_other_bodies_are_left_alone() -> None:
    assert name_the_field(b'{"error": "bad", "field": "label"}') is None
    assert name_the_field(b'{"error": "bad"}') is None
    assert name_the_field(b'[{"error": "bad"}]') is None
    assert name_the_field(b"not json") is None
