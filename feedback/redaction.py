"""Masks personal data (emails, phone numbers, card-like numbers) in texts before storage."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by spaces or dashes, checked with Luhn below.
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
# International or national phone numbers: 7+ digits with the usual separators.
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d ().-]{5,}\d(?!\w)")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD]" if _luhn_ok(digits) else match.group(0)


_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def _mask_phone(match: re.Match[str]) -> str:
    if _DATE.fullmatch(match.group(0)):
        return match.group(0)
    digits = re.sub(r"\D", "", match.group(0))
    return "[PHONE]" if 7 <= len(digits) <= 15 else match.group(0)


# Every pattern above needs an "@" or a digit: texts without one (most) skip the three passes.
_MAY_HOLD_PII = re.compile(r"[@\d]")


def redact(text: str) -> str:
    """``text`` with emails, Luhn-valid card numbers and phone numbers masked."""
    if _MAY_HOLD_PII.search(text) is None:
        return text
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_mask_card, text)
    return _PHONE.sub(_mask_phone, text)
