"""The shipped default model: a LoRA adapter (with its pooler, head and softmax
temperature) over a packaged base encoder, small enough to live in git.

``model/shipped/<name>/`` holds ``adapter_config.json``,
``adapter_model.safetensors``, ``calibration.json`` and the model card
(``card.json``, ``MODEL_CARD.md``). On first use a machine merges the adapter
into the base encoder, folds the temperature into the head and keeps the result
as a Hugging Face directory in its cache (once, under a file lock); the loader
then serves it like any fine-tuned model (ONNX Runtime int8 on CPUs). Its
version names the artifact's content: ``shipped:<name>@<sha256 prefix>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cache_entry import defect, seal_directory
from core.file_lock import exclusive_file_lock
from model.base_models import COMPLETE, rebuild_aside, resolve_base_model
from model.classifiers import sentiment_model

logger = logging.getLogger(__name__)

SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
VERSION_PREFIX = "shipped:"
ARTIFACT_FILES = ("adapter_config.json", "adapter_model.safetensors", "calibration.json")
# Hand-written labelled texts in six languages (GUARD.md beside it): the training gate's
# general guard where a team has no base data, since the shipped model's own training
# data may not be redistributed. JSON lines with text, label and language.
GENERAL_GUARD = SHIPPED_ROOT / "multilingual-e5-small-sentiment" / "guard.jsonl"


@dataclass(frozen=True)
class ShippedModel:
    name: str
    directory: Path
    card: Mapping[str, Any]

    @property
    def base_model(self) -> str:
        return str(self.card["base_model"])

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for name in ARTIFACT_FILES:
            digest.update(name.encode())
            digest.update((self.directory / name).read_bytes())
        return digest.hexdigest()

    @property
    def version(self) -> str:
        return f"{VERSION_PREFIX}{self.name}@{self.sha256[:12]}"

    @property
    def temperature(self) -> float:
        calibration = json.loads((self.directory / "calibration.json").read_text())
        return float(calibration["temperature"])

    def metadata(self) -> dict[str, Any]:
        """What the store records for a trained model, from the card; the drift
        reference is the served tweet test set's accuracy."""
        served = self.card.get("metrics", {}).get("serving", {}).get("tweet_test", {})
        reference = {"accuracy": served["accuracy"]} if "accuracy" in served else {}
        return {
            "reference": reference,
            "base_model": self.base_model,
            "template_versions": list(self.card.get("template_versions", [])),
            "languages": list(self.card.get("languages", [])),
            "metrics": dict(self.card.get("metrics", {})),
            "shipped": self.name,
            "card": f"model/shipped/{self.name}/MODEL_CARD.md",
        }


def shipped_models(root: Path = SHIPPED_ROOT) -> list[ShippedModel]:
    models = []
    for card in sorted(root.glob("*/card.json")):
        directory = card.parent
        if all((directory / name).is_file() for name in ARTIFACT_FILES):
            models.append(ShippedModel(directory.name, directory, json.loads(card.read_text())))
    return models


def shipped_for_base(base_model: str, root: Path = SHIPPED_ROOT) -> ShippedModel | None:
    """The shipped model trained on the base preset ``base_model``, if there is one."""
    return next((m for m in shipped_models(root) if m.base_model == base_model), None)


def shipped_by_version(version: str, root: Path = SHIPPED_ROOT) -> ShippedModel | None:
    return next((m for m in shipped_models(root) if m.version == version), None)


def merge_adapter(base_dir: Path, adapter_dir: Path, temperature: float, destination: Path) -> Path:
    """Base encoder + LoRA adapter (+ temperature folded into the head), saved as a
    sequence-classification directory."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from model.calibration import fold_temperature

    model = sentiment_model(base_dir)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().eval()
    fold_temperature(merged.classifier, temperature)
    destination.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(destination)
    AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True).save_pretrained(destination)
    return destination


def materialize(shipped: ShippedModel, cache_dir: Path, *, checksums: bool = False) -> Path:
    """The merged model directory of ``shipped`` in the machine's cache (made once,
    remade when its files are not those it was built with: ``core.cache_entry``;
    ``checksums``: read every byte to tell, not only the sizes)."""
    target = cache_dir / "shipped" / f"{shipped.name}-{shipped.sha256[:12]}"
    if defect(target / COMPLETE, checksums=checksums) is None:
        return target
    with exclusive_file_lock(cache_dir / "shipped" / ".lock"):
        problem = defect(target / COMPLETE, checksums=checksums)
        if problem is None:
            return target
        started = time.perf_counter()
        base_dir = resolve_base_model(shipped.base_model, cache_dir, checksums=checksums)
        partial = rebuild_aside(target, problem)
        merge_adapter(base_dir, shipped.directory, shipped.temperature, partial)
        seal_directory(partial, COMPLETE)
        partial.replace(target)
        logger.info(
            "built the shipped model %s in %s (%.1f s)",
            shipped.version,
            target,
            time.perf_counter() - started,
        )
    return target
