"""Serializes exported feedback rows as JSON Lines or CSV, one chunk per row."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from feedback.store import EXPORT_FIELDS

ExportFormat = Literal["jsonl", "csv"]

MEDIA_TYPES: dict[str, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(values)
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else value


def serialize(rows: Iterable[dict[str, Any]], fmt: ExportFormat) -> Iterator[str]:
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps(row, ensure_ascii=False) + "\n"
        return
    yield _csv_line(list(EXPORT_FIELDS))
    for row in rows:
        yield _csv_line([_csv_cell(row[name]) for name in EXPORT_FIELDS])
