"""``Retry-After`` as every HTTP client of the project reads it (core.retry_after)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from core.retry_after import retry_after_s

NOW = 1_764_500_000.0


def test_retry_after_reads_delay_seconds_and_http_dates_from_now() -> None:
    assert retry_after_s("30", now=NOW) == 30.0
    assert retry_after_s(" 0 ", now=NOW) == 0.0
    assert retry_after_s("2.5", now=NOW) == 2.5
    in_two_minutes = format_datetime(datetime.fromtimestamp(NOW + 120, UTC), usegmt=True)
    assert retry_after_s(in_two_minutes, now=NOW) == pytest.approx(120.0)
    past = format_datetime(datetime.fromtimestamp(NOW - 60, UTC), usegmt=True)
    assert retry_after_s(past, now=NOW) == 0.0
    # Without ``now``, from the clock: a date 7 s ahead is about 7 s away.
    soon = format_datetime(datetime.fromtimestamp(datetime.now(UTC).timestamp() + 7, UTC),
                           usegmt=True)  # fmt: skip
    assert 5.0 < (retry_after_s(soon) or 0.0) <= 7.0


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "-5", "1.5e3", "Tue, 99 Foo"])
def test_an_absent_or_unreadable_retry_after_is_none(value: str | None) -> None:
    assert retry_after_s(value, now=NOW) is None
