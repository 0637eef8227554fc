"""Cache entries (the merged shipped model, ONNX exports) are sealed when whole; a
truncated or damaged file is found and rebuilt, never loaded (a model process that
loaded a truncated ONNX file crashed at every restart)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from core.cache_entry import defect
from core.settings import packaged_templates_dir
from model.base_models import COMPLETE
from model.classifiers import FineTunedClassifier, sentiment_model
from model.onnx_runtime import QUANTIZED_LAYOUT, onnx_model_file
from model.shipped import ShippedModel, materialize
from model.templates import TemplateRegistry

TEXTS = ["the parcel never arrived", "thanks, works great", "it is a box"]


def truncate(path: Path) -> int:
    """Cut ``path`` to half (a full disk, a copy cut short); its former size."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size // 2)
    return size


def onnx_classifier(model_dir: Path, cache: Path) -> FineTunedClassifier:
    return FineTunedClassifier(
        model_dir, version="t", quantize="int8", backend="onnx", onnx_cache_dir=cache
    )


def scores(classifier: FineTunedClassifier) -> list[dict[str, float]]:
    template = TemplateRegistry.load(packaged_templates_dir()).get("v1")
    return [dict(s) for s in classifier.predict([template.render(t) for t in TEXTS], template)]


def test_a_truncated_onnx_export_is_exported_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    expected = scores(onnx_classifier(tiny_model_dir, tmp_path))
    [served] = tmp_path.glob(f"*.{QUANTIZED_LAYOUT['int8']}.onnx")
    size = truncate(served)
    assert scores(onnx_classifier(tiny_model_dir, tmp_path)) == expected
    assert served.stat().st_size == size


def test_a_damaged_onnx_file_of_the_right_size_is_exported_again(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    expected = scores(onnx_classifier(tiny_model_dir, tmp_path))
    [served] = tmp_path.glob(f"*.{QUANTIZED_LAYOUT['int8']}.onnx")
    original = served.read_bytes()
    served.write_bytes(bytes(64) + original[64:])  # same size: only a checksum tells
    assert onnx_model_file(tiny_model_dir, tmp_path, quantize="int8") == served
    # ONNX Runtime refuses it; the loader compares every byte and exports it again.
    assert scores(onnx_classifier(tiny_model_dir, tmp_path)) == expected
    assert served.read_bytes()[:64] == original[:64]


def test_an_unsealed_export_is_not_trusted(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A file without its completion marker (an older build, or one cut short before
    sealing) is exported again."""
    path = onnx_model_file(tiny_model_dir, tmp_path, quantize="none")
    marker = path.with_name(f".{path.name}.complete.json")
    marker.unlink()
    path.write_bytes(b"not a model")
    assert onnx_model_file(tiny_model_dir, tmp_path, quantize="none") == path
    assert defect(marker, checksums=True) is None and path.stat().st_size > 1000


@pytest.fixture
def shipped(tiny_model_dir: Path, tmp_path: Path) -> ShippedModel:
    """A shipped model as the project packages one (a LoRA adapter, its calibration
    and card) over the tiny base model."""
    from peft import LoraConfig, get_peft_model

    directory = tmp_path / "shipped" / "tiny-sentiment"
    config = LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"])
    with warnings.catch_warnings():  # peft reads a property transformers deprecates
        warnings.simplefilter("ignore", FutureWarning)
        get_peft_model(sentiment_model(tiny_model_dir), config).save_pretrained(str(directory))
    (directory / "calibration.json").write_text(json.dumps({"temperature": 1.5}))
    card = {"base_model": str(tiny_model_dir)}
    (directory / "card.json").write_text(json.dumps(card))
    return ShippedModel("tiny-sentiment", directory, card)


def test_a_truncated_merged_model_is_merged_again(shipped: ShippedModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    merged = materialize(shipped, cache)
    assert defect(merged / COMPLETE, checksums=True) is None
    weights = merged / "model.safetensors"
    size = truncate(weights)
    assert defect(merged / COMPLETE) is not None
    assert materialize(shipped, cache) == merged
    assert weights.stat().st_size == size and defect(merged / COMPLETE, checksums=True) is None
    assert scores(onnx_classifier(merged, merged))  # it loads and serves
    # A byte changed in place is found where every byte is read (sentiloop prepare).
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    assert materialize(shipped, cache) == merged and weights.read_bytes() != original
    assert materialize(shipped, cache, checksums=True) == merged
    assert weights.read_bytes() == original
    assert not list((cache / "shipped").glob("*.partial"))
