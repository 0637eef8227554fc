"""Shared helpers of the benchmark scripts: data paths, loaders, output."""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

from training import corpora
from training.examples import Example

ROOT = Path(__file__).resolve().parents[1]
# The benchmark corpora, never part of the project: ../shared/data beside the clone,
# or where SENTILOOP_SHARED_DATA points.
DATA = Path(os.environ.get("SENTILOOP_SHARED_DATA") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "bench" / "results"

logger = logging.getLogger("bench")


def tweets(split: str) -> list[Example]:
    return corpora.tweets(DATA, split)


def sst2(split: str) -> list[Example]:
    """SST-2 (binary): 0 negative, 1 positive."""
    return corpora.sst2(DATA, split)


def xlmt(language: str, split: str) -> list[Example]:
    """XLM-T tweets; ``language``: en, fr, de or es."""
    return corpora.xlmt(DATA, language, split)


def machine() -> dict[str, Any]:
    """What the figures depend on: results move a lot between CPUs (AVX-512/AMX or not)."""
    model, flags = "", set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpu_features": sorted(
            flag for flag in flags if flag in {"avx2", "avx512f", "avx512_vnni", "amx_int8"}
        ),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    logger.info("wrote %s", path)
    return path
