"""Masks personal data (emails, phone numbers, card-like numbers) in texts before storage."""

from __future__ import annotations

import re

from core.settings import TextStorage

# Unicode-aware: internationalised addresses (jörg@exämple.de) and the full-width at
# sign (U+FF20).
_EMAIL = re.compile(r"[\w.%+-]+[@\uff20][\w-]+(?:\.[\w-]+)*\.\w{2,}")
# A run of 13 or more digits (any script's digits, full-width ones included),
# optionally grouped by spaces, dots or dashes. Within it every window of 13-19
# consecutive digits is checked with Luhn: a card quoted beside other digits ("4111
# 1111 1111 1111 123", a phone number before it) makes a longer run that fails the
# check as a whole, and was stored in clear when only the whole run was tried.
_CARD_RUN = re.compile(r"(?<!\d)\d(?:[\s.\-\u2010-\u2015\uff0d]?\d){12,}(?!\d)")
_CARD_DIGITS = range(13, 20)
# International or national phone numbers: 7+ digits with the usual separators.
_PHONE = re.compile(r"(?<![\w+(])(?:\+|\(\+?)?\d[\d ().-]{5,}\d(?!\w)")


def _card_spans(values: list[int]) -> list[tuple[int, int]]:
    """Merged ``[start, end)`` digit positions covered by Luhn-valid windows of 13-19
    digits. Prefix sums make each window's check O(1): in a window ending at ``end``,
    the digits doubled are those at positions of the parity of ``end``."""
    doubled = [value * 2 - 9 if value > 4 else value * 2 for value in values]
    sums = ([0], [0])  # sums[q][i]: digits before i, those at positions of parity q doubled
    for position, (value, twice) in enumerate(zip(values, doubled, strict=True)):
        for parity in (0, 1):
            sums[parity].append(sums[parity][-1] + (twice if position % 2 == parity else value))
    spans: list[tuple[int, int]] = []
    for end in range(13, len(values) + 1):
        prefix = sums[end % 2]
        for length in _CARD_DIGITS:
            start = end - length
            if start < 0:
                break
            if (prefix[end] - prefix[start]) % 10 == 0:
                while spans and start <= spans[-1][1]:
                    start = min(start, spans.pop()[0])
                spans.append((start, end))
    return spans


def _mask_card(match: re.Match[str]) -> str:
    found = match.group(0)
    positions = [index for index, char in enumerate(found) if char.isdigit()]
    spans = _card_spans([int(found[index]) for index in positions])
    if not spans:
        return found
    pieces, kept_from = [], 0
    for start, end in spans:
        pieces += [found[kept_from : positions[start]], "[CARD]"]
        kept_from = positions[end - 1] + 1
    pieces.append(found[kept_from:])
    return "".join(pieces)


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
    if len(digits) < 7:
        return found
    # Over 15 digits (E.164's longest) is a number dialled like one (+ or a bracketed
    # code) followed by more digits: masked whole rather than stored in clear.
    if len(digits) > 15:
        return "[PHONE]" if found.startswith(("+", "(")) else found
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
    if "@" in text or "\uff20" in text:  # the pattern backtracks over long digit runs
        text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD_RUN.sub(_mask_card, text)
    return _PHONE.sub(_mask_phone, text)


def stored_text(text: str, mode: TextStorage) -> str | None:
    """What is stored of ``text`` under ``SENTILOOP_TEXT_STORAGE``: all of it, the
    redacted text, or nothing. Texts and feedback comments alike, whichever way they
    came in (the API, a batch, a file import)."""
    if mode == "raw":
        return text
    if mode == "redacted":
        return redact(text)
    return None
