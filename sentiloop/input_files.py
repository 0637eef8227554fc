"""Reads user texts from .txt (one per line), .csv or .jsonl files."""

from __future__ import annotations

import csv
import json
from pathlib import Path


class InputFileError(ValueError):
    pass


def read_texts(path: Path, text_field: str = "text") -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or text_field not in reader.fieldnames:
                raise InputFileError(f"{path}: no column {text_field!r} (has {reader.fieldnames})")
            return [row[text_field] for row in reader if row[text_field].strip()]
    if suffix in (".jsonl", ".ndjson"):
        texts = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_field not in record:
                    raise InputFileError(f"{path}:{number}: no key {text_field!r}")
                if str(record[text_field]).strip():
                    texts.append(str(record[text_field]))
        return texts
    raise InputFileError(f"{path}: unsupported file type {suffix!r}; use .txt, .csv or .jsonl")
