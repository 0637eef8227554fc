from __future__ import annotations

import pytest

from model.labels import LABELS, normalize_label, scores_to_label
from storage.redaction import redact


@pytest.mark.parametrize(
    ("raw", "label"),
    [("Negative", "negative"), ("neu", "neutral"), (2, "positive"), (" 0 ", "negative")],
)
def test_normalize_label_accepts_common_spellings(raw: object, label: str) -> None:
    assert normalize_label(raw) == label


def test_normalize_label_rejects_unknown_and_lists_labels() -> None:
    with pytest.raises(ValueError, match="negative, neutral, positive"):
        normalize_label("mixed")


def test_scores_to_label_takes_the_highest_score() -> None:
    assert scores_to_label({"negative": 0.2, "neutral": 0.5, "positive": 0.3}) == "neutral"
    assert LABELS == ("negative", "neutral", "positive")


def test_redact_masks_emails_phones_and_valid_cards() -> None:
    text = "Mail ann.lee@example.co.uk or call +44 20 7946 0958; card 4111-1111-1111-1111."
    assert redact(text) == "Mail [EMAIL] or call [PHONE]; card [CARD]."


def test_redact_keeps_ordinary_numbers() -> None:
    text = "Order 12345 arrived on 2024-05-01, 3 items for 19.99"
    assert redact(text) == text


FULL_WIDTH_CARD_GROUPED = "4111 1111 1111 1111".translate(
    {ord(digit): 0xFF10 + int(digit) for digit in "0123456789"}
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111.1111.1111.1111 please", "card [CARD] please"),
        # Full-width digits (U+FF10..U+FF19), grouped and not.
        ("card " + FULL_WIDTH_CARD_GROUPED + ".", "card [CARD]."),
        ("card " + FULL_WIDTH_CARD_GROUPED.replace(" ", ""), "card [CARD]"),
        ("write to jörg@exämple.de today", "write to [EMAIL] today"),
        ("write to x\uff20example.com", "write to [EMAIL]"),
    ],
)
def test_redact_covers_dotted_full_width_and_international_forms(text: str, expected: str) -> None:
    assert redact(text) == expected
