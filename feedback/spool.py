"""A disk spool for prediction records the database could not take.

Records are appended (and fsynced) to JSON Lines files under one directory;
any process can replay any file later: a file is claimed by an atomic rename,
so two workers never replay the same one, and a claimed file that fails to
replay is renamed back.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from feedback.records import PredictionRecord

PENDING_SUFFIX = ".jsonl"
CLAIMED_SUFFIX = ".replaying"


def _encode(record: PredictionRecord) -> str:
    data = asdict(record)
    data["created_at"] = record.created_at.isoformat()
    return json.dumps(data, ensure_ascii=False)


def _decode(line: str) -> PredictionRecord:
    data = json.loads(line)
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    return PredictionRecord(**data)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file: Path | None = None

    def write(self, records: Sequence[PredictionRecord]) -> None:
        """Append records durably (fsync) to this process's current spool file."""
        if not records:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._file is None or not self._file.exists():
            self._file = self.directory / f"spool-{os.getpid()}-{uuid.uuid4().hex}{PENDING_SUFFIX}"
        with self._file.open("a", encoding="utf-8") as handle:
            handle.write("".join(_encode(record) + "\n" for record in records))
            handle.flush()
            os.fsync(handle.fileno())

    def pending(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"*{PENDING_SUFFIX}"))

    def claim(self, path: Path) -> Path | None:
        """Take a pending file for replay; None if another process took it first."""
        if path == self._file:
            self._file = None  # start a new file for records spooled meanwhile
        claimed = path.with_name(f"{path.name}.{os.getpid()}{CLAIMED_SUFFIX}")
        try:
            path.rename(claimed)
        except FileNotFoundError:
            return None
        return claimed

    def release(self, claimed: Path) -> None:
        """Give a claimed file back (its replay failed)."""
        original = claimed.name.rsplit(".", 2)[0]
        claimed.rename(claimed.with_name(original))

    @staticmethod
    def read(path: Path) -> list[PredictionRecord]:
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    records.append(_decode(line))
                except (ValueError, TypeError, KeyError):
                    continue  # a torn last line from a crash mid-write
        return records
