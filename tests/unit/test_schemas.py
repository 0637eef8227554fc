from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.http.schemas import (
    MAX_CHARS_PER_TEXT,
    MAX_TEXTS_PER_REQUEST,
    FeedbackRequest,
    PredictRequest,
)

PID = "0192f0a4-7c1e-7b3a-9d2e-5f6a7b8c9d0e"


def error_locs(exc: ValidationError) -> list[tuple[object, ...]]:
    return [tuple(error["loc"]) for error in exc.errors()]


def test_predict_accepts_one_text_or_a_list() -> None:
    assert PredictRequest(text="hi").all_texts == ["hi"]
    assert PredictRequest(texts=["a", "b"]).all_texts == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"text": ""}, ("text",)),
        ({"text": "   "}, ("text",)),
        ({"text": "x" * (MAX_CHARS_PER_TEXT + 1)}, ("text",)),
        ({"texts": []}, ("texts",)),
        ({"texts": ["ok"] * (MAX_TEXTS_PER_REQUEST + 1)}, ("texts",)),
        ({"texts": ["ok", 5]}, ("texts", 1)),
        ({"text": "ok", "colour": "red"}, ("colour",)),
    ],
)
def test_predict_rejects_bad_input_naming_the_field(
    body: dict[str, object], loc: tuple[object, ...]
) -> None:
    with pytest.raises(ValidationError) as caught:
        PredictRequest.model_validate(body)
    assert loc in error_locs(caught.value)


def test_predict_needs_exactly_one_of_text_and_texts() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'text'"):
        PredictRequest.model_validate({"text": "a", "texts": ["b"]})


def test_feedback_needs_exactly_one_of_label_and_verdict() -> None:
    with pytest.raises(ValidationError, match="exactly one of 'label' or 'verdict'"):
        FeedbackRequest(prediction_id=PID)
    with pytest.raises(ValidationError) as caught:
        FeedbackRequest.model_validate({"prediction_id": PID, "label": "mixed"})
    assert ("label",) in error_locs(caught.value)


def test_feedback_labels_are_taken_as_training_takes_them() -> None:
    for raw, label in (("Positive", "positive"), (2, "positive"), ("0", "negative"),
                       ("NEU", "neutral"), (" negative ", "negative")):  # fmt: skip
        request = FeedbackRequest.model_validate({"prediction_id": PID, "label": raw})
        assert request.label == label, raw
    with pytest.raises(ValidationError, match="unknown label 'mixed'") as caught:
        FeedbackRequest.model_validate({"prediction_id": PID, "label": "mixed"})
    assert ("label",) in error_locs(caught.value)


def test_external_ids_go_with_their_texts() -> None:
    one = PredictRequest.model_validate({"text": "a", "external_id": "T-1", "source": "crm"})
    assert one.all_external_ids == ["T-1"]
    many = PredictRequest.model_validate({"texts": ["a", "b"], "external_ids": ["T-1", None]})
    assert many.all_external_ids == ["T-1", None]
    assert PredictRequest(texts=["a", "b"]).all_external_ids == [None, None]
    with pytest.raises(ValidationError, match="'external_ids' has 1 entries for 2 texts"):
        PredictRequest.model_validate({"texts": ["a", "b"], "external_ids": ["T-1"]})
    with pytest.raises(ValidationError, match="'external_id' goes with 'text'"):
        PredictRequest.model_validate({"texts": ["a"], "external_id": "T-1"})
    with pytest.raises(ValidationError) as caught:
        PredictRequest.model_validate({"text": "a", "external_id": "x" * 201})
    assert ("external_id",) in error_locs(caught.value)


def test_a_prediction_id_must_be_one_the_service_makes() -> None:
    """A new user sent "abc" and was told 404 "unknown prediction": a malformed id is a
    400 naming the field; an id in capitals or without dashes is the same prediction."""
    for malformed in ("abc", "p-1", "0192f0a4-7c1e-7b3a-9d2e-5f6a7b8c9d0", "12345"):
        with pytest.raises(ValidationError, match="is not a prediction id") as caught:
            FeedbackRequest(prediction_id=malformed, verdict="correct")
        assert error_locs(caught.value) == [("prediction_id",)], malformed
    for spelling in (PID.upper(), PID.replace("-", "")):
        assert FeedbackRequest(prediction_id=spelling, verdict="correct").prediction_id == PID


def test_feedback_names_a_prediction_or_an_external_id() -> None:
    assert FeedbackRequest(external_id="T-1", source="crm", verdict="correct").prediction_id is None
    with pytest.raises(ValidationError, match="exactly one of 'prediction_id' or 'external_id'"):
        FeedbackRequest(label="neutral")
    with pytest.raises(ValidationError, match="exactly one of 'prediction_id' or 'external_id'"):
        FeedbackRequest(prediction_id=PID, external_id="T-1", label="neutral")


def test_routing_keys_go_with_their_texts_and_errors_name_the_list() -> None:
    """Issue 24, item 7: one routing key per text, like external_ids; a count that
    does not match is a 400 naming the field."""
    many = PredictRequest.model_validate({"texts": ["a", "b"], "routing_keys": ["c-1", None]})
    assert many.all_routing_keys == ["c-1", None]
    assert PredictRequest(texts=["a", "b"], routing_key="c-9").all_routing_keys == ["c-9"] * 2
    for field in ("routing_keys", "external_ids"):
        with pytest.raises(ValidationError, match=f"'{field}' has 1 entries for 2 texts") as caught:
            PredictRequest.model_validate({"texts": ["a", "b"], field: ["x"]})
        assert error_locs(caught.value) == [(field,)]
        with pytest.raises(ValidationError, match=f"'{field}' goes with 'texts'") as caught:
            PredictRequest.model_validate({"text": "a", field: ["x"]})
        assert error_locs(caught.value) == [(field,)]
    with pytest.raises(ValidationError, match="one of 'routing_key'"):
        PredictRequest.model_validate({"texts": ["a"], "routing_key": "k", "routing_keys": ["k"]})


def test_language_must_be_a_known_iso_639_1_code() -> None:
    """Issue 24, item 21: 'zz' was taken and stored."""
    assert PredictRequest.model_validate({"text": "a", "language": "de"}).language == "de"
    for code in ("zz", "xx", "und", "EN"):
        with pytest.raises(ValidationError) as caught:
            PredictRequest.model_validate({"text": "a", "language": code})
        assert error_locs(caught.value) == [("language",)], code


def test_every_language_the_detector_names_is_a_known_code() -> None:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from model.language import ISO_639_1

    assert len(ISO_639_1) == 183  # registered since June 2021
    detected = set(LanguageIdentifier.from_model_file(MODEL_FILE).nb_classes)
    assert {code for code in detected if len(code) == 2} <= ISO_639_1


@pytest.mark.parametrize(
    ("model", "body", "loc"),
    [
        ("predict", b'{"text": "bad \\ud800 text"}', ("text",)),
        ("predict", b'{"texts": ["ok", "\\udfff"]}', ("texts", 1)),
        ("feedback", b'{"prediction_id": "0192f0a4-7c1e-7b3a-9d2e-5f6a7b8c9d0e", '
               b'"verdict": "correct", "comment": "\\ud800"}', ("comment",)),
    ],
)  # fmt: skip
def test_an_unpaired_surrogate_escape_is_an_error_naming_the_field(
    model: str, body: bytes, loc: tuple[object, ...]
) -> None:
    """Issue 24, item 21: pydantic's JSON parser refused the escape as invalid JSON,
    a 400 with loc []."""
    from service.http.schemas import FeedbackBody

    cls = PredictRequest if model == "predict" else FeedbackBody
    with pytest.raises(ValidationError, match="unicode") as caught:
        cls.model_validate_json(body)
    assert error_locs(caught.value) == [loc]


def test_invalid_json_is_still_refused_as_invalid_json() -> None:
    with pytest.raises(ValidationError) as caught:
        PredictRequest.model_validate_json(b'{"text": ')
    assert caught.value.errors()[0]["type"] == "json_invalid"
