from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(
    "text",
    [
        # Financial news and CRM texts: amounts, percentages, dates, year ranges, ids.
        "Operating profit rose by 26.9 % to EUR 13.1 mn from EUR 10.3 mn in 2007 - 2008.",
        "Net sales increased to EUR 131.3 million (EUR 114.5 million) in Q3.",
        "Revenue of 2 500 000 euros in 2023, up from 1.950.000 EUR.",
        "The company expects sales of $ 1 050 000 000 next year.",
        "Between 2019 and 2020 revenue grew 12.5 % to 1 050 000 $.",
        "Delivery planned for 2023 11 25, invoice 20231125 paid.",
        "Ticket 12345678: refund of 99.90 USD still missing.",
        "Bestellung Nr. 4471902 kam nicht an, Rechnung 2023-114.",
        "order #100234567 arrived broken",
    ],
)
def test_redact_leaves_amounts_dates_and_ids_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call me on 0171 2345678 after six", "call me on [PHONE] after six"),
        ("reach me: (030) 12345678", "reach me: [PHONE]"),
        ("my number is 555-123-4567", "my number is [PHONE]"),
        ("ring +33 6 12 34 56 78 or 06 12 34 56 78", "ring [PHONE] or [PHONE]"),
        (
            "order #100234567 arrived broken, call 5551234567",
            "order #100234567 arrived broken, call [PHONE]",
        ),
    ],
)
def test_redact_still_masks_phone_numbers_beside_amounts(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # The cases of issue 24 (item 13), stored in clear before: the card beside more digits.
        "You charged my visa 4111 1111 1111 1111 123 twice",
        "visa 4111 1111 1111 1111 12 26",
        "4111-1111-1111-1111-123",
        "+1 415 555 0100 4111 1111 1111 1111",
    ],
)
def test_redact_masks_a_card_quoted_beside_more_digits(text: str) -> None:
    redacted = redact(text)
    assert "[CARD]" in redacted
    assert "4111111111111111" not in re.sub(r"\D", "", redacted)
    assert "415 555 0100" not in redacted


def _luhn_completed(body: str) -> str:
    """``body`` with the check digit that makes it Luhn-valid."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str(-total % 10)


@st.composite
def quoted_cards(draw: st.DrawFn) -> tuple[str, str]:
    """(a text quoting a Luhn-valid card number, the card's digits): the card grouped
    any way (spaces, dashes, dots or none), with words or digits before or after it."""
    length = draw(st.integers(13, 19))
    card = _luhn_completed(draw(st.from_regex(rf"\A[2-6][0-9]{{{length - 2}}}\Z")))
    separator = draw(st.sampled_from(["", " ", "-", "."]))
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=8))
    groups, rest = [], card
    for size in sizes:
        if rest:
            groups.append(rest[:size])
            rest = rest[size:]
    groups.append(rest)
    quoted = separator.join(group for group in groups if group)
    glue = st.sampled_from(["", " ", "-"])
    around = st.one_of(
        st.just(""),
        st.from_regex(r"\A[A-Za-z]{1,12}( [A-Za-z]{1,12}){0,3}\Z"),
        st.from_regex(r"\A[0-9]{1,12}\Z"),
    )
    before, after = draw(around), draw(around)
    before_glue = draw(glue) if before[-1:].isdigit() else " "
    after_glue = draw(glue) if after[:1].isdigit() else " "
    return f"{before}{before_glue}{quoted}{after_glue}{after}".strip(), card


@settings(max_examples=400, deadline=None)
@given(quoted_cards())
def test_redact_masks_every_valid_card_in_any_grouping_and_company(
    case: tuple[str, str],
) -> None:
    text, card = case
    redacted = redact(text)
    assert "[CARD]" in redacted, (text, redacted)
    assert card not in re.sub(r"\D", "", redacted), (text, redacted)


@given(st.text(alphabet=st.characters(exclude_categories=["Nd"], exclude_characters="@\uff20")))
def test_texts_without_at_sign_or_digit_skip_redaction(text: str) -> None:
    assert redact(text) is text
