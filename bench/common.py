"""Shared helpers of the benchmark scripts: data paths, loaders, output."""

from __future__ import annotations

import codecs
import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

from training.examples import Example, load_examples

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"

logger = logging.getLogger("bench")


def tweets(split: str) -> list[Example]:
    return load_examples(DATA / "tweet_sentiment_extraction" / f"{split}.jsonl")


def sst2(split: str) -> list[Example]:
    """SST-2 (binary): 0 negative, 1 positive."""
    return load_examples(
        DATA / "sst2" / f"{split}.tsv", label_map={"0": "negative", "1": "positive"}
    )


def xlmt(language: str, split: str) -> list[Example]:
    folder = DATA / "xlmt_multilingual" / language
    texts = (folder / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
    labels = (folder / f"{split}_labels.txt").read_text(encoding="utf-8").splitlines()
    names = {"0": "negative", "1": "neutral", "2": "positive"}
    return [
        Example(text=codecs.decode(text, "unicode_escape") if "\\u" in text else text,
                label=names[label.strip()])  # type: ignore[arg-type]
        for text, label in zip(texts, labels, strict=True)
        if text.strip()
    ]  # fmt: skip


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
