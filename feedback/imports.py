"""Labels from files (a labelled review-queue export, a CRM's nightly CSAT export):
CSV, TSV or JSONL rows naming a prediction by ``prediction_id`` (which wins when
both are there) or by ``external_id`` (+ ``source``), with a ``label`` (any case,
short names, 0/1/2) or a ``verdict`` (correct/incorrect). Each row is stored on its
own, with an idempotency key made of the row's reference and judgement: importing
the same file again stores nothing twice. Rows without a label or verdict (not
labelled yet) are skipped and counted.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from model.labels import normalize_label
from storage import FeedbackError, FeedbackInput, store

VERDICTS = ("correct", "incorrect")


class ImportFileError(ValueError):
    """A file that cannot be read as feedback (named with its path and row)."""


@dataclass
class ImportSummary:
    rows: int = 0
    stored: int = 0
    replayed: int = 0
    skipped_unlabelled: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, "row N: why"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "stored": self.stored,
            "replayed": self.replayed,
            "skipped_unlabelled": self.skipped_unlabelled,
            "failed": self.failed,
            "errors": self.errors,
        }


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number as an editor shows it, row) of a CSV or JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ImportFileError(f"{path}:{number}: not JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise ImportFileError(f"{path}:{number}: expected a JSON object per line")
                yield number, record
        return
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            names = set(reader.fieldnames or ())
            if not names & {"prediction_id", "external_id"}:
                raise ImportFileError(
                    f"{path}: needs a prediction_id or external_id column (has {sorted(names)})"
                )
            if not names & {"label", "verdict"}:
                raise ImportFileError(
                    f"{path}: needs a label or verdict column (has {sorted(names)})"
                )
            for number, row in enumerate(reader, start=2):
                yield number, row
        return
    raise ImportFileError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")


def _text(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _feedback(row: dict[str, Any], default_source: str | None) -> FeedbackInput | None:
    """The row as feedback; None when it holds no judgement yet. ValueError: why not."""
    raw_label, raw_verdict = _text(row, "label"), _text(row, "verdict")
    if raw_label is None and raw_verdict is None:
        return None
    if raw_label is not None and raw_verdict is not None:
        raise ValueError("has both a label and a verdict; keep one")
    label = normalize_label(raw_label) if raw_label is not None else None
    verdict = raw_verdict.lower() if raw_verdict is not None else None
    if verdict is not None and verdict not in VERDICTS:
        raise ValueError(f"verdict {raw_verdict!r} is not one of {', '.join(VERDICTS)}")
    prediction_id, external_id = _text(row, "prediction_id"), _text(row, "external_id")
    if prediction_id is not None:
        external_id = None  # the exact reference wins (a review-queue export has both)
    elif external_id is None:
        raise ValueError("needs a prediction_id or an external_id")
    source = _text(row, "source") or default_source
    reference = f"p:{prediction_id}" if prediction_id else f"e:{source}:{external_id}"
    key = hashlib.sha256(f"import|{reference}|{label}|{verdict}".encode()).hexdigest()
    return FeedbackInput(
        prediction_id=prediction_id,
        external_id=external_id,
        label=label,
        verdict=verdict,  # type: ignore[arg-type]
        comment=_text(row, "comment"),
        source=source,
        idempotency_key=f"import:{key[:40]}",
    )


def import_feedback(
    path: Path,
    *,
    sessions: sessionmaker[Session],
    source: str | None = None,
    max_errors: int = 10,
) -> ImportSummary:
    """Store every judged row of ``path``; one bad row never stops the others."""
    summary = ImportSummary()
    for number, row in _rows(path):
        summary.rows += 1
        try:
            item = _feedback(row, source)
        except ValueError as error:
            summary.failed += 1
            if len(summary.errors) < max_errors:
                summary.errors.append(f"row {number}: {error}")
            continue
        if item is None:
            summary.skipped_unlabelled += 1
            continue
        try:
            result = store.record_feedback(session_factory=sessions, feedback=item)
        except FeedbackError as error:
            summary.failed += 1
            if len(summary.errors) < max_errors:
                summary.errors.append(f"row {number}: {error}")
            continue
        if result.replayed:
            summary.replayed += 1
        else:
            summary.stored += 1
    return summary
