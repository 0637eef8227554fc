"""Local corrections: what a team's feedback taught, applied only where it applies
(issue 20).

A correction sits on a parent model (the shipped model, or any fine-tuned
model) and changes its answers only for texts that resemble the texts the team
gave feedback on. It holds:

* ``keys``: the normalized mean-pooled hidden states, at the parent's middle
  layer (``gate_layer``), of the texts the correction was trained on. Mid-layer
  states keep what a text is about (its domain, language, register), which the
  last layers, tuned for sentiment, have mostly thrown away: in the issue's
  measurement 98% of a domain's held-out texts fell within the radius below and
  5% of tweets, none of the XLM-T tweets in four languages.
* ``threshold``: the radius. A text whose highest cosine similarity to a key is
  at least this is in the correction's domain (the gate is open).
* ``weight`` and ``bias``: a linear residual over the parent's last-layer
  features (mean-pooled and first-token states, each normalized), added to the
  parent's logits where the gate is open.

Outside its domain a corrected model answers exactly as its parent did, so what
the champion knows elsewhere (other languages, other kinds of text) cannot be
trained away; the training gate still measures it (``training.gate``). A
correction weighs a few MB (the keys are most of it), and computing it costs
the parent's forward pass plus one small matrix product.

On disk, a correction's directory holds ``correction.json`` (the parent's tag,
``gate_layer``, ``threshold``) and ``correction.safetensors``. A directory that
serves it (a training candidate, or the machine's cache entry made by
``materialize_correction``) also links the parent's files, so that it reads as the
parent's Hugging Face directory with the correction beside it;
``model.correction_modules.logits_module`` builds what runs it (torch, and the ONNX
export). This module handles the files only and imports no torch: the loader reads
them on the serving path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.cache_entry import defect, seal_directory
from core.file_lock import exclusive_file_lock
from model.base_models import COMPLETE, rebuild_aside
from model.tokenization import UNIGRAM_FILE

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CORRECTION_FILE = "correction.json"
WEIGHTS_FILE = "correction.safetensors"
CORRECTION_FILES = (CORRECTION_FILE, WEIGHTS_FILE)
FORMAT = 1


def is_correction(directory: Path) -> bool:
    return (directory / CORRECTION_FILE).is_file()


def read_config(directory: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((directory / CORRECTION_FILE).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{directory / CORRECTION_FILE}: unknown format {config.get('format')!r}")
    return config


def parent_of(directory: Path) -> str:
    return str(read_config(directory)["parent"])


def correction_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in CORRECTION_FILES:
        digest.update(name.encode())
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def correction_bytes(directory: Path) -> int:
    return sum((directory / name).stat().st_size for name in CORRECTION_FILES)


def write_correction(
    destination: Path, *, parent: str, tensors: dict[str, torch.Tensor], config: dict[str, Any]
) -> Path:
    """A directory holding the correction only (what the model store keeps)."""
    from safetensors.torch import save_file

    destination.mkdir(parents=True, exist_ok=True)
    contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
    save_file(contiguous, str(destination / WEIGHTS_FILE))
    body = {"format": FORMAT, "parent": parent} | config
    (destination / CORRECTION_FILE).write_text(json.dumps(body, indent=2) + "\n")
    return destination


def stored_form(directory: Path, destination: Path) -> Path:
    """The correction's own files of a serving directory, copied to ``destination``
    (what the model store keeps)."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in CORRECTION_FILES:
        shutil.copy2(directory / name, destination / name)
    return destination


def link_parent(parent_dir: Path, destination: Path) -> None:
    """Link every file of the parent's directory into ``destination`` (the correction's
    own files excepted): the parent's weights are read, never copied."""
    destination.mkdir(parents=True, exist_ok=True)
    for source in parent_dir.iterdir():
        skipped = source.name in CORRECTION_FILES or source.name.startswith(".")
        # The parent's own exports (ONNX files and the compact vocabulary beside a
        # shipped model) are not the model.
        exported = source.suffix in (".onnx", ".partial", ".lock") or source.name == UNIGRAM_FILE
        if skipped or exported or not source.is_file():
            continue
        os.symlink(source.resolve(), destination / source.name)


def materialize_correction(
    directory: Path, parent_dir: Path, cache_dir: Path, *, checksums: bool = False
) -> Path:
    """The directory serving the correction in ``directory`` over ``parent_dir`` (its
    parent's directory): the parent's files linked, the correction's copied, made once
    per machine and sealed like every cache entry (``core.cache_entry``)."""
    root = cache_dir / "corrections"
    target = root / correction_sha256(directory)[:16]
    if defect(target / COMPLETE, checksums=checksums) is None:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_file_lock(root / ".lock"):
        problem = defect(target / COMPLETE, checksums=checksums)
        if problem is None:
            return target
        started = time.perf_counter()
        partial = rebuild_aside(target, problem)
        link_parent(parent_dir, partial)
        for name in CORRECTION_FILES:
            shutil.copy2(directory / name, partial / name)
        seal_directory(partial, COMPLETE)
        partial.replace(target)
        logger.info(
            "made the corrected model %s over %s in %.1f s",
            target,
            parent_dir,
            time.perf_counter() - started,
        )
    return target
