"""Labelled examples and the user's base-data files (CSV, TSV, JSONL)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from model.labels import Label, normalize_label
from model.text_keys import normalize_text

TEXT_COLUMNS = ("text", "sentence", "content", "review", "message")


class DataFileError(ValueError):
    pass


@dataclass(frozen=True)
class Example:
    text: str
    label: Label
    source: str = "base"  # "base" or "feedback"
    weight: float = 1.0
    created_at: datetime | None = None

    @property
    def key(self) -> str:
        return normalize_text(self.text)


def parse_label_map(spec: str | None) -> dict[str, str] | None:
    """``"0=negative,1=positive"`` -> ``{"0": "negative", "1": "positive"}``."""
    if not spec:
        return None
    mapping: dict[str, str] = {}
    for pair in spec.split(","):
        raw, _, label = pair.partition("=")
        if not label:
            raise DataFileError(f"label map entry {pair!r} must look like RAW=LABEL")
        mapping[raw.strip()] = normalize_label(label)
    return mapping


def _label(raw: object, label_map: Mapping[str, str] | None, where: str) -> Label:
    try:
        if label_map is not None:
            key = str(raw).strip()
            if key not in label_map:
                raise ValueError(f"label {raw!r} is not in the label map {dict(label_map)}")
            return normalize_label(label_map[key])
        return normalize_label(raw)
    except ValueError as exc:
        raise DataFileError(f"{where}: {exc}") from exc


def _text_column(columns: list[str], text_field: str | None, path: Path) -> str:
    if text_field is not None:
        if text_field not in columns:
            raise DataFileError(f"{path}: no column {text_field!r} (has {columns})")
        return text_field
    for candidate in TEXT_COLUMNS:
        if candidate in columns:
            return candidate
    raise DataFileError(f"{path}: no text column; name one of {TEXT_COLUMNS} or pass text_field")


def _rows(path: Path) -> list[dict[str, object]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows: list[dict[str, object]] = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise DataFileError(f"{path}:{number}: invalid JSON: {exc}") from exc
        return rows
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as handle:
            delimiter = "\t" if suffix == ".tsv" else ","
            reader = csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL)
            return [
                {key.strip(): (value or "").rstrip("\r") for key, value in row.items() if key}
                for row in reader
            ]
    raise DataFileError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")


def load_examples(
    path: Path,
    *,
    text_field: str | None = None,
    label_field: str = "label",
    label_map: Mapping[str, str] | None = None,
    source: str = "base",
) -> list[Example]:
    """Examples from a CSV/TSV/JSONL file; rows with an empty text are skipped."""
    rows = _rows(path)
    if not rows:
        return []
    columns = list(rows[0])
    text_column = _text_column(columns, text_field, path)
    if label_field not in columns:
        raise DataFileError(f"{path}: no label column {label_field!r} (has {columns})")
    examples = []
    for number, row in enumerate(rows, start=1):
        text = str(row.get(text_column) or "")
        if not text.strip():
            continue
        label = _label(row.get(label_field), label_map, f"{path} row {number}")
        examples.append(Example(text=text, label=label, source=source))
    return examples
