"""Tests that read ../shared/data skip, saying why, where it is absent (a fresh clone
elsewhere), and fail instead where SENTILOOP_REQUIRE_DATA=1 (scripts/test.sh, CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import shared_data


def test_absent_data_skips_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTILOOP_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"\.\./shared/data beside the clone"):
        shared_data(tmp_path / "absent")


def test_absent_data_fails_where_it_is_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTILOOP_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="needs the benchmark data"):
        shared_data(tmp_path / "absent")
    assert shared_data(tmp_path) == tmp_path
