"""Labels from files (a labelled review-queue export, a CRM's nightly CSAT export):
CSV, TSV or JSONL rows naming a prediction by ``prediction_id`` (which wins when
both are there) or by ``external_id`` (+ ``source``), with a ``label`` (any case,
short names, 0/1/2, or raw values read through a label map such as ``stars5``) or a
``verdict`` (correct/incorrect).

Each row goes the API's way in (``feedback.intake``): validated as the body of
``POST /v1/feedback`` (the same limits), its comment redacted or dropped by
``SENTILOOP_TEXT_STORAGE``, stored on its own with an idempotency key made of the
row's reference and judgement: importing the same file again stores nothing twice.
A bad row is reported by its number and the rows after it are still imported. Rows
without a label or verdict (not labelled yet) are skipped and counted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.settings import TextStorage
from feedback.intake import FeedbackRequest, first_problem, to_input
from model.labels import Label
from storage import FeedbackError, store


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


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        names = set(reader.fieldnames or ())
        if not names & {"prediction_id", "external_id"}:
            raise ImportFileError(
                f"{path}: needs a prediction_id or external_id column (has {sorted(names)})"
            )
        if not names & {"label", "verdict"}:
            raise ImportFileError(f"{path}: needs a label or verdict column (has {sorted(names)})")
        while True:
            number = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield number, f"not readable as CSV ({error})"
                continue
            yield number, row


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number as an editor shows it, the row or why it cannot be read) of a CSV,
    TSV or JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, f"not JSON ({error.msg})"
                    continue
                if not isinstance(record, dict):
                    yield number, "expected a JSON object"
                    continue
                yield number, record
        return
    if suffix in (".csv", ".tsv"):
        # Python's csv stops at fields over 128 KiB with an error that leaves the reader
        # mid-field; a long field is read whole and refused by the limits instead.
        limit = csv.field_size_limit()
        csv.field_size_limit(sys.maxsize)
        try:
            yield from _csv_rows(path, "\t" if suffix == ".tsv" else ",")
        finally:
            csv.field_size_limit(limit)
        return
    raise ImportFileError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv or .jsonl")


def _text(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _request(
    row: dict[str, Any], default_source: str | None, label_map: Mapping[str, Label] | None
) -> FeedbackRequest | None:
    """The row as the body of ``POST /v1/feedback``; None when it holds no judgement
    yet. ValueError (a pydantic ``ValidationError`` among them): why not."""
    raw_label, raw_verdict = _text(row, "label"), _text(row, "verdict")
    if raw_label is None and raw_verdict is None:
        return None
    label: str | None = raw_label
    if raw_label is not None and label_map is not None:
        if raw_label not in label_map:
            known = ", ".join(repr(raw) for raw in label_map)
            raise ValueError(f"label: {raw_label!r} is not in the label map ({known})")
        label = label_map[raw_label]
    prediction_id, external_id = _text(row, "prediction_id"), _text(row, "external_id")
    if prediction_id is not None:
        external_id = None  # the exact reference wins (a review-queue export has both)
    request = FeedbackRequest.model_validate(
        {
            "prediction_id": prediction_id,
            "external_id": external_id,
            "label": label,
            "verdict": raw_verdict.lower() if raw_verdict is not None else None,
            "comment": _text(row, "comment"),
            "source": _text(row, "source") or default_source,
        }
    )
    reference = f"p:{prediction_id}" if prediction_id else f"e:{request.source}:{external_id}"
    judgement = f"{request.label}|{request.verdict}"
    key = hashlib.sha256(f"import|{reference}|{judgement}".encode()).hexdigest()
    return request.model_copy(update={"idempotency_key": f"import:{key[:40]}"})


def _why(error: ValueError) -> str:
    if isinstance(error, ValidationError):
        field, message = first_problem(error)
        return f"{field}: {message}" if field else message
    return str(error)


def _refuse_binary_ids(path: Path) -> None:
    """Labels that are only 0 and 1 read as class ids would store every 1 as neutral:
    almost always a binary file (0 negative, 1 positive). Stored feedback cannot be
    taken back, so such a file needs a label map that says which it is."""
    seen = {
        str(row.get("label")).strip()
        for _, row in _rows(path)
        if isinstance(row, dict) and _text(row, "label") is not None
    }
    if seen and seen <= {"0", "1"}:
        raise ImportFileError(
            f"{path}: the labels are only 0 and 1, which as class ids would store every 1 "
            "as neutral; for binary labels (0 negative, 1 positive) pass --label-map binary, "
            "if 1 does mean neutral pass --label-map '0=negative,1=neutral'"
        )


def import_feedback(
    path: Path,
    *,
    sessions: sessionmaker[Session],
    text_storage: TextStorage,
    source: str | None = None,
    label_map: Mapping[str, Label] | None = None,
    max_errors: int = 10,
) -> ImportSummary:
    """Store every judged row of ``path``; one bad row never stops the others.
    ``text_storage``: what is kept of comments (``SENTILOOP_TEXT_STORAGE``)."""
    if label_map is None:
        _refuse_binary_ids(path)
    summary = ImportSummary()

    def failed(number: int, why: str) -> None:
        summary.failed += 1
        if len(summary.errors) < max_errors:
            summary.errors.append(f"row {number}: {why}")

    for number, row in _rows(path):
        summary.rows += 1
        if isinstance(row, str):
            failed(number, row)
            continue
        try:
            request = _request(row, source, label_map)
        except ValueError as error:
            failed(number, _why(error))
            continue
        if request is None:
            summary.skipped_unlabelled += 1
            continue
        try:
            result = store.record_feedback(
                session_factory=sessions, feedback=to_input(request, text_storage)
            )
        except FeedbackError as error:
            failed(number, str(error))
            continue
        except (IntegrityError, DataError) as error:  # a value the database refuses
            failed(number, f"refused by the database ({type(error.orig).__name__})")
            continue
        if result.replayed:
            summary.replayed += 1
        else:
            summary.stored += 1
    return summary
