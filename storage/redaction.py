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
_PHONE = re.compile(r"(?<![\w+(])(?:\+|\(\+?)?\d[\d ().-]{5,}\d(?!\w)")


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


_DATE = re.compile(
    r"\d{4}[-./ ]\d{1,2}[-./ ]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}"
    r"|(?:19|20)\d\d\s*[-\u2013/]\s*(?:19|20)\d\d"  # a date, or a range of years
)
# Amounts, not phone numbers: a currency or magnitude beside the figure ("EUR 2 500
# 000", "2.500.000 euros", "1 050 000 $", "12.5 %").
_CURRENCY = (
    r"(?:[$€£¥₹%]|\b(?:eur|euros?|usd|dollars?|gbp|pounds?|chf|sek|nok|dkk|jpy|yen|"
    r"mn|mln|million|millions|bn|billion|billions|k|m|tsd|mio|mrd)\b)"
)
_AMOUNT_BEFORE = re.compile(_CURRENCY + r"\s*$", re.IGNORECASE)
_AMOUNT_AFTER = re.compile(r"^\s*" + _CURRENCY, re.IGNORECASE)
# Identifiers a CRM text quotes: "order 12345678", "ticket #4471902", "invoice no. 2023114".
_IDENTIFIER_BEFORE = re.compile(
    r"\b(?:order|ticket|invoice|case|ref|reference|id|no|nr|account|tracking|"
    r"bestellung|rechnung|commande|pedido|factura)\.?\s*(?:#|no\.?|nr\.?|number)?\s*#?\s*$",
    re.IGNORECASE,
)


def _mask_phone(match: re.Match[str]) -> str:
    found = match.group(0)
    if _DATE.fullmatch(found):
        return found
    before = match.string[max(0, match.start() - 24) : match.start()]
    after = match.string[match.end() : match.end() + 12]
    if _AMOUNT_BEFORE.search(before) or _AMOUNT_AFTER.search(after):
        return found
    if _IDENTIFIER_BEFORE.search(before):
        return found
    digits = re.sub(r"\D", "", found)
    if not 7 <= len(digits) <= 15:
        return found
    # A bare run of digits is an id or an amount more often than a phone number,
    # unless it is dialled like one (a leading + or 0) or long enough to be one.
    if found.isdigit() and not (found.startswith("0") or len(digits) >= 10):
        return found
    return "[PHONE]"


# Every pattern above needs an "@" or a digit: texts without one (most) skip the three passes.
_MAY_HOLD_PII = re.compile(r"[@\uff20\d]")


def redact(text: str) -> str:
    """``text`` with emails, Luhn-valid card numbers and phone numbers masked."""
    if _MAY_HOLD_PII.search(text) is None:
        return text
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_mask_card, text)
    return _PHONE.sub(_mask_phone, text)
