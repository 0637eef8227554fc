"""Masks personal data (emails, phone numbers, card-like numbers) in texts before storage."""

from __future__ import annotations

import re

# Unicode-aware: internationalised addresses (jörg@exämple.de) and the full-width at
# sign (U+FF20).
_EMAIL = re.compile(r"[\w.%+-]+[@\uff20][\w-]+(?:\.[\w-]+)*\.\w{2,}")
# 13-19 digits (any script's digits, full-width ones included), optionally grouped
# by spaces, dots or dashes, checked with Luhn below.
_CARD = re.compile(r"(?<!\w)(?:\d[\s.\-\u2010-\u2015\uff0d]?){12,18}\d(?!\w)")
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
_MAY_HOLD_PII = re.compile(r"[@\uff20\d]")


def redact(text: str) -> str:
    """``text`` with emails, Luhn-valid card numbers and phone numbers masked."""
    if _MAY_HOLD_PII.search(text) is None:
        return text
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_mask_card, text)
    return _PHONE.sub(_mask_phone, text)
