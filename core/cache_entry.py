"""Completion markers of the machine's cache entries (a converted base encoder, the
merged shipped model, an ONNX export).

An entry is built aside and renamed into place, then *sealed*: a marker file
records the size and sha256 of each of its files, written to a temporary name,
fsynced and renamed, so that it exists only once the files are whole. Before an
entry is trusted its ``defect`` is asked: a missing marker (an interrupted or
older build) or a file whose size differs from the marker (truncated by a full
disk or a half copy) makes it rebuilt. A truncated ONNX file, trusted because it
existed, crashed every model process at start, and the server restarted them
for ever; a truncated ``model.safetensors`` ended ``sentiloop prepare`` in a
traceback. Sizes are compared on every use (a stat per file); the checksums are
compared where it is worth reading every byte (``sentiloop prepare``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def seal(marker: Path, files: Iterable[Path]) -> None:
    """Write ``marker`` (atomically) recording ``files``, which lie under its folder."""
    record = {}
    for path in sorted(files):
        _fsync(path)
        record[path.relative_to(marker.parent).as_posix()] = {
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
    partial = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    with partial.open("w") as handle:
        json.dump(record, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(marker)


def seal_directory(directory: Path, marker_name: str) -> Path:
    """Seal every file under ``directory`` with a marker inside it; the marker's path."""
    marker = directory / marker_name
    seal(marker, (path for path in directory.rglob("*") if path.is_file()))
    return marker


def defect(marker: Path, *, checksums: bool = False) -> str | None:
    """Why the entry ``marker`` seals cannot be trusted, or None when it is whole."""
    try:
        record = json.loads(marker.read_text())
    except FileNotFoundError:
        return "it has no completion marker (an interrupted or older build)"
    except (OSError, ValueError):
        return f"its completion marker {marker.name} is unreadable"
    if not isinstance(record, dict) or not record:
        return f"its completion marker {marker.name} lists no files"
    for name, expected in record.items():
        path = marker.parent / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != expected.get("bytes"):
            return f"{name} has {size} bytes, {expected.get('bytes')} when it was built"
        if checksums and file_sha256(path) != expected.get("sha256"):
            return f"{name} differs from what was built (sha256)"
    return None


def file_marker(path: Path) -> Path:
    """The completion marker of a cache entry that is one file (beside it, hidden)."""
    return path.with_name(f".{path.name}.complete.json")


def build_file(path: Path, make: Callable[[Path], None], problem: str) -> None:
    """Make the one-file entry ``path`` aside (``make`` writes the file it is given),
    rename it into place and seal it. Call it under the cache's lock, once ``defect``
    has told ``problem``."""
    if path.exists():
        logger.warning("rebuilding %s: %s", path, problem)
    for stale in path.parent.glob(f"{path.name}.*.partial"):  # of processes that died
        stale.unlink(missing_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    make(partial)
    partial.replace(path)
    seal(file_marker(path), [path])
