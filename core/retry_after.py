"""``Retry-After`` (RFC 9110 section 10.2.3) read as seconds to wait, for every HTTP
client of the project (the Python client, the CRM write-back)."""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime

# delay-seconds: digits; a decimal fraction is accepted (some servers send one).
_SECONDS = re.compile(r"\d+(\.\d+)?")


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from ``now`` (Unix time; the clock when None) that ``value`` asks to
    wait: delay-seconds or an HTTP date, never negative; None when absent or
    unreadable (a negative or exponent number included)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
