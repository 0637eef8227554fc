"""A disk spool for prediction records the database could not take.

Records are appended (and fsynced) to JSON Lines files under one directory;
any process can replay any file later: a file is claimed by an atomic rename,
so two workers never replay the same one, and a claimed file that fails to
replay is renamed back.

Records the database refuses (and spool lines that cannot be read) go to the
``quarantine`` folder beside the spool files, with the reason, for an operator
to inspect; they are never replayed.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from storage.records import PredictionRecord

PENDING_SUFFIX = ".jsonl"
CLAIMED_SUFFIX = ".replaying"
QUARANTINE_DIR = "quarantine"


def _as_json(record: PredictionRecord) -> dict[str, object]:
    data = asdict(record)
    data["created_at"] = record.created_at.isoformat()
    return data


def _encode(record: PredictionRecord) -> str:
    # ASCII escapes: any Python string round-trips, lone surrogates included.
    return json.dumps(_as_json(record))


def _decode(line: str) -> PredictionRecord:
    data = json.loads(line)
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    return PredictionRecord(**data)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file: Path | None = None

    def write(self, records: Sequence[PredictionRecord]) -> None:
        """Append records durably (fsync) to this process's current spool file.

        Raises ``OSError`` (a full disk) with the file as it was: a partly written
        append is cut off again, so no torn line stays behind.
        """
        if not records:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._file is None or not self._file.exists():
            self._file = self.directory / f"spool-{os.getpid()}-{uuid.uuid4().hex}{PENDING_SUFFIX}"
        _append_durably(self._file, "".join(_encode(record) + "\n" for record in records))

    @property
    def quarantine_directory(self) -> Path:
        return self.directory / QUARANTINE_DIR

    def quarantine(self, records: Sequence[PredictionRecord], reason: str) -> Path:
        """Keep records the database refused, with the reason; returns the file."""
        return self._quarantine([{"reason": reason, "record": _as_json(r)} for r in records])

    def quarantine_lines(self, lines: Sequence[str], reason: str) -> Path:
        """Keep spool lines that could not be read, with the reason; returns the file."""
        return self._quarantine([{"reason": reason, "line": line} for line in lines])

    def _quarantine(self, entries: Sequence[dict[str, object]]) -> Path:
        folder = self.quarantine_directory
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"quarantine-{os.getpid()}.jsonl"
        _append_durably(path, "".join(json.dumps(entry) + "\n" for entry in entries))
        return path

    def pending(self) -> list[Path]:
        """Spool files this process may replay: its own, and those of processes that
        are gone. Another live process may still be appending to its file, which a
        rename would not stop, so those files are left to it."""
        if not self.directory.is_dir():
            return []
        return sorted(
            path
            for path in self.directory.glob(f"*{PENDING_SUFFIX}")
            if not _written_by_another_live_process(path)
        )

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
    def read(path: Path) -> tuple[list[PredictionRecord], list[str]]:
        """The records of a spool file, and the lines that could not be read (a torn
        last line from a crash mid-write, say)."""
        records, unreadable = [], []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    records.append(_decode(line))
                except (ValueError, TypeError, KeyError):
                    unreadable.append(line)
        return records, unreadable


def _written_by_another_live_process(path: Path) -> bool:
    parts = path.name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _append_durably(path: Path, text: str) -> None:
    """Append ``text`` and fsync; on failure cut the file back to where it was."""
    data = text.encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        start = os.lseek(descriptor, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, start)
            raise
    finally:
        os.close(descriptor)
