"""Retrained models stored as a LoRA delta on their parent (issue 20).

A model retrained from the champion with a LoRA adapter differs from it by the
adapter, the pooler and the head: a few MB, where the merged model is 470 MB.
The store keeps only that (``adapter_config.json``, ``adapter_model.safetensors``)
and ``delta.json``: the parent's tag and the softmax temperature folded into the
head. On first use the loader merges the delta onto its parent's directory (the
shipped model, or another delta resolved the same way: a chain) and keeps the
result in the machine's cache under a name derived from the delta's content
(parent included), built in a scratch folder, sealed and renamed into place under
a file lock, so a half-written directory is never served. Merging is the same
operation training ran before it evaluated the candidate, so the served scores
are those the gate saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from core.cache_entry import defect, seal_directory
from core.file_lock import exclusive_file_lock
from model.base_models import COMPLETE, rebuild_aside
from model.shipped import merge_adapter

logger = logging.getLogger(__name__)

DELTA_FILE = "delta.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
DELTA_FILES = (*ADAPTER_FILES, DELTA_FILE)


def write_delta(adapter_dir: Path, destination: Path, *, parent: str, temperature: float) -> Path:
    """A directory holding the delta: the adapter files of ``adapter_dir`` (as PEFT
    saves them) and ``delta.json``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(adapter_dir / name, destination / name)
    (destination / DELTA_FILE).write_text(
        json.dumps({"parent": parent, "temperature": temperature}, indent=2) + "\n"
    )
    return destination


def is_delta(directory: Path) -> bool:
    return (directory / DELTA_FILE).is_file()


def parent_of(directory: Path) -> str:
    return str(json.loads((directory / DELTA_FILE).read_text())["parent"])


def delta_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in DELTA_FILES:
        digest.update(name.encode())
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def delta_bytes(directory: Path) -> int:
    return sum((directory / name).stat().st_size for name in DELTA_FILES)


def materialize_delta(
    directory: Path, parent_dir: Path, cache_dir: Path, *, checksums: bool = False
) -> Path:
    """The merged model directory of the delta in ``directory`` over ``parent_dir`` (the
    parent's merged directory), made once per machine and sealed like every cache
    entry (``core.cache_entry``: remade when its files are not those it was built with)."""
    root = cache_dir / "deltas"
    target = root / delta_sha256(directory)[:16]
    if defect(target / COMPLETE, checksums=checksums) is None:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_file_lock(root / ".lock"):
        problem = defect(target / COMPLETE, checksums=checksums)
        if problem is None:
            return target
        started = time.perf_counter()
        temperature = float(json.loads((directory / DELTA_FILE).read_text())["temperature"])
        partial = rebuild_aside(target, problem)
        merge_adapter(parent_dir, directory, temperature, partial)
        seal_directory(partial, COMPLETE)
        partial.replace(target)
        logger.info(
            "merged the delta %s onto %s in %s (%.1f s)",
            directory,
            parent_dir,
            target,
            time.perf_counter() - started,
        )
    return target
