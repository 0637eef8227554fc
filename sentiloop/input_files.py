"""Reads user texts from .txt (one per line), .csv or .jsonl files, each with the
line it was read from, so that scores written in order can be matched back to the
file even though empty texts are left out."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path


class InputFileError(ValueError):
    pass


@dataclass
class TextsRead:
    """The texts of a file in order, as ``(line, text)`` (the line a text starts on,
    counted from 1, a CSV header included), and how many records had an empty text."""

    lines: list[tuple[int, str]] = field(default_factory=list)
    empty: int = 0

    def add(self, line: int, text: str) -> None:
        if text.strip():
            self.lines.append((line, text))
        else:
            self.empty += 1

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.lines]


def read_texts(path: Path, text_field: str = "text") -> TextsRead:
    suffix = path.suffix.lower()
    read = TextsRead()
    if suffix == ".txt":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            read.add(number, line)
        return read
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or text_field not in reader.fieldnames:
                raise InputFileError(f"{path}: no column {text_field!r} (has {reader.fieldnames})")
            start = reader.line_num + 1
            for row in reader:
                read.add(start, row[text_field] or "")
                start = reader.line_num + 1
        return read
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    read.empty += 1
                    continue
                record = json.loads(line)
                if text_field not in record:
                    raise InputFileError(f"{path}:{number}: no key {text_field!r}")
                read.add(number, str(record[text_field]))
        return read
    raise InputFileError(f"{path}: unsupported file type {suffix!r}; use .txt, .csv or .jsonl")
