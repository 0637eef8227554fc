"""Labelled examples and the user's base-data files (CSV, TSV, JSONL, Parquet)."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from model import labels
from model.labels import LABEL_MAP_HELP as _PRESET_HELP
from model.labels import LABEL_MAP_PRESETS, Label, normalize_label
from model.text_keys import normalize_text

logger = logging.getLogger(__name__)

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
    """A preset name (``stars5``, ``binary``) or ``"0=negative,1=positive"`` as a map
    (``model.labels.parse_label_map``; a bad one is a ``DataFileError`` here)."""
    try:
        mapping = labels.parse_label_map(spec)
    except labels.LabelMapError as error:
        raise DataFileError(str(error)) from None
    return dict(mapping) if mapping is not None else None


@dataclass
class LoadedExamples:
    """The examples of a data file, and how many rows were dropped, by reason."""

    examples: list[Example]
    rows: int
    dropped: Counter[str] = field(default_factory=Counter)


def _column(columns: list[str], wanted: str, path: Path, option: str, header: bool) -> str:
    """``wanted`` as a column name, or as a 1-based position ("2")."""
    if wanted in columns:
        return wanted
    if wanted.isdigit() and 1 <= int(wanted) <= len(columns):
        return columns[int(wanted) - 1]
    if not header:
        raise DataFileError(
            f"{path}: {option} {wanted!r} is no column position (1 to {len(columns)})"
        )
    raise DataFileError(
        f"{path}: no column {wanted!r} for {option} (columns: {columns}); name one, give "
        f"its position (1 to {len(columns)}), or, if the first row is data, pass "
        "--no-header with positions"
    )


def _text_column(columns: list[str], text_field: str | None, path: Path, header: bool) -> str:
    if text_field is not None:
        return _column(columns, text_field, path, "--text-field", header)
    for candidate in TEXT_COLUMNS:
        if candidate in columns:
            return candidate
    if not header:
        raise DataFileError(f"{path}: without a header, name the text column: --text-field 2")
    raise DataFileError(
        f"{path}: no text column (columns: {columns}); name it with --text-field NAME, or "
        "for a file without a header row pass --no-header --text-field 2 --label-field 3 "
        "(column positions)"
    )


def _rows(path: Path, header: bool) -> list[dict[str, object]]:
    """The file's rows as column -> value (columns "1", "2", ... without a header)."""
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows: list[dict[str, object]] = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except ValueError as exc:
                        raise DataFileError(f"{path}:{number}: invalid JSON: {exc}") from None
                    if not isinstance(record, dict):
                        raise DataFileError(f"{path}:{number}: expected a JSON object per line")
                    rows.append(record)
        return rows
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError:
            raise DataFileError(
                f"{path}: reading Parquet needs pyarrow: pip install 'sentiloop[parquet]'"
            ) from None
        return list(parquet.read_table(path).to_pylist())
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        with path.open(newline="", encoding="utf-8-sig") as handle:
            if header:
                reader = csv.DictReader(handle, delimiter=delimiter)
                return [
                    {key.strip(): (value or "").rstrip("\r") for key, value in row.items() if key}
                    for row in reader
                ]
            return [
                {str(n): value for n, value in enumerate(row, start=1)}
                for row in csv.reader(handle, delimiter=delimiter)
                if row
            ]
    raise DataFileError(
        f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet"
    )


def _unknown_labels_error(path: Path, unknown: Counter[str], first_row: dict[str, int]) -> str:
    listed = ", ".join(
        f"{value!r} ({count} rows, first row {first_row[value]})"
        for value, count in unknown.most_common(5)
    )
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    hint = f'map them with --label-map (presets: {_PRESET_HELP}; or e.g. "4=positive")'
    if set(unknown) <= set(LABEL_MAP_PRESETS["stars5"]):
        hint = "star ratings? pass --label-map stars5 (1-2 negative, 3 neutral, 4-5 positive)"
    return (
        f"{path}: {sum(unknown.values())} rows have labels that are not negative, neutral or "
        f"positive: {listed}{more}; {hint}, or drop those rows with --drop-unknown-labels"
    )


def load_examples(
    path: Path,
    *,
    text_field: str | None = None,
    label_field: str = "label",
    label_map: Mapping[str, str] | None = None,
    source: str = "base",
    header: bool = True,
    drop_unknown_labels: bool = False,
) -> LoadedExamples:
    """Examples from a CSV/TSV (with or without a header row), JSONL or Parquet file.
    Columns by name or 1-based position. Rows with an empty text are dropped and
    counted; rows with an unknown label are an error naming them (or, with
    ``drop_unknown_labels``, dropped and counted)."""
    rows = _rows(path, header)
    loaded = LoadedExamples(examples=[], rows=len(rows))
    if not rows:
        return loaded
    columns = list(rows[0])
    text_column = _text_column(columns, text_field, path, header)
    label_column = _column(columns, label_field, path, "--label-field", header)
    unknown: Counter[str] = Counter()
    first_row: dict[str, int] = {}
    offset = 2 if header and path.suffix.lower() in (".csv", ".tsv") else 1
    for number, row in enumerate(rows, start=offset):
        text = str(row.get(text_column) or "")
        if not text.strip():
            loaded.dropped["empty_text"] += 1
            continue
        raw = row.get(label_column)
        key = "" if raw is None else str(raw).strip()
        try:
            label = normalize_label(label_map[key] if label_map is not None else raw)
        except (KeyError, ValueError):
            unknown[key] += 1
            first_row.setdefault(key, number)
            continue
        loaded.examples.append(Example(text=text, label=label, source=source))
    if unknown and not drop_unknown_labels:
        raise DataFileError(_unknown_labels_error(path, unknown, first_row))
    if unknown:
        loaded.dropped["unknown_label"] += sum(unknown.values())
    if label_map is None:
        seen = {str(row.get(label_column)).strip() for row in rows}
        if seen and seen <= {"0", "1"}:
            logger.warning(
                "%s: the labels are only 0 and 1, read as class ids (negative, neutral); "
                "for binary data pass --label-map binary",
                path,
            )
    return loaded
