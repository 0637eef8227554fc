"""CSV export cells a spreadsheet would run, and where `sentiloop serve` binds."""

from __future__ import annotations

import csv
import io
import socket

import pytest
import typer

from core.settings import Settings
from sentiloop.cli import check_port_free, serving_host
from storage.export import serialize
from storage.store import EXPORT_FIELDS


def test_csv_cells_that_start_a_formula_are_neutralised() -> None:
    row: dict[str, object] = dict.fromkeys(EXPORT_FIELDS, "")
    row.update(comment='=HYPERLINK("http://x","y")', source="+cmd|' /C calc'!A0", text="-2+3",
               label="@SUM(A1)", verdict="plain", confidence=-0.5)  # fmt: skip
    parsed = next(csv.DictReader(io.StringIO("".join(serialize([row], "csv")))))
    assert parsed["comment"] == '\'=HYPERLINK("http://x","y")'
    assert parsed["source"].startswith("'+") and parsed["text"] == "'-2+3"
    assert parsed["label"] == "'@SUM(A1)" and parsed["verdict"] == "plain"
    assert parsed["confidence"] == "-0.5"  # numbers are not text


def test_jsonl_export_keeps_values_as_stored() -> None:
    row: dict[str, object] = dict.fromkeys(EXPORT_FIELDS, None)
    row["comment"] = "=1+1"
    assert '"comment": "=1+1"' in "".join(serialize([row], "jsonl"))


def test_serve_binds_loopback_without_authentication_and_refuses_public_addresses() -> None:
    local = Settings(database_url="sqlite:///x.db")
    assert serving_host(local, None) == "127.0.0.1"
    assert serving_host(local, "127.0.0.1") == "127.0.0.1"
    with pytest.raises(typer.BadParameter, match="SENTILOOP_ALLOW_UNAUTHENTICATED_REMOTE"):
        serving_host(local, "0.0.0.0")
    exposed = Settings(database_url="sqlite:///x.db", allow_unauthenticated_remote=True)
    assert serving_host(exposed, "0.0.0.0") == "0.0.0.0"
    secured = Settings(database_url="sqlite:///x.db", auth="required")
    assert serving_host(secured, None) == "0.0.0.0"


def test_serve_names_a_taken_port_before_preparing_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(typer.Exit):
            check_port_free("127.0.0.1", port)
        error = capsys.readouterr().err
        assert error.startswith(f"error: cannot bind 127.0.0.1:{port}: ") and "--port" in error
        assert error.count("\n") == 1  # one line, as every command error
    check_port_free("127.0.0.1", port)  # free again once closed
