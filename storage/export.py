"""Serializes exported feedback rows as JSON Lines or CSV, one chunk per row.

CSV text cells that a spreadsheet would run as a formula are neutralised;
JSON Lines keep every value as stored.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from storage.store import EXPORT_FIELDS

ExportFormat = Literal["jsonl", "csv"]

MEDIA_TYPES: dict[str, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


# A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV
# Injection"): such text cells get a leading apostrophe, shown but not evaluated.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def serialize(
    rows: Iterable[dict[str, Any]], fmt: ExportFormat, fields: Sequence[str] = EXPORT_FIELDS
) -> Iterator[str]:
    """Rows as JSON Lines, or as CSV with the columns ``fields``."""
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps(row, ensure_ascii=False) + "\n"
        return
    yield _csv_line(list(fields))
    for row in rows:
        yield _csv_line([_csv_cell(row[name]) for name in fields])
