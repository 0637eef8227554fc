"""Local corrections (``model.corrections``) on a tiny model: closed, the gate leaves
the parent's logits as they are; open, it adds the residual; the ONNX export (what
serves on CPUs) computes what torch computes, gate included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from model import correction_modules, corrections
from model.classifiers import FineTunedClassifier
from model.onnx_runtime import EXPORT_LAYOUT, QUANTIZED_LAYOUT
from model.templates import PromptTemplate
from model.tokenization import UNIGRAM_FILE
from training.correction import radius

TEXTS = ["the lid broke at once", "the lid is excellent", "where is my parcel", "ok"]
TEMPLATE = PromptTemplate(
    version="t", description="", input_template="{text}",
    verbalizers={"negative": ("bad",), "neutral": ("ok",), "positive": ("good",)}, sha256="x",
)  # fmt: skip


def corrected(parent: Path, destination: Path, *, keys_from: list[str], threshold: float) -> Path:
    """A correction of ``parent`` whose keys are the gate features of ``keys_from``."""
    module = correction_modules.logits_module(parent)
    tokenizer = AutoTokenizer.from_pretrained(str(parent))
    model = module.model
    layer = correction_modules.gate_layer_of(model)
    with torch.no_grad():
        inputs = tokenizer(keys_from, padding=True, return_tensors="pt")
        _, gates, features = correction_modules.features(model, layer, **inputs)
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "keys": gates.half(),
        "weight": torch.randn(3, features.shape[1], generator=generator),
        "bias": torch.tensor([1.0, -1.0, 0.5]),
    }
    corrections.link_parent(parent, destination)
    config = {"gate_layer": layer, "threshold": threshold}
    return corrections.write_correction(destination, parent="p", tensors=tensors, config=config)


def logits(directory: Path, texts: list[str]) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    with torch.no_grad():
        inputs = tokenizer(texts, padding=True, return_tensors="pt")
        return correction_modules.logits_module(directory)(**inputs).numpy()


def test_a_closed_gate_leaves_the_parents_logits_and_an_open_one_adds_the_residual(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    parent = logits(tiny_model_dir, TEXTS)
    closed = corrected(tiny_model_dir, tmp_path / "closed", keys_from=TEXTS[:1], threshold=1.01)
    np.testing.assert_allclose(logits(closed, TEXTS), parent, atol=1e-6)
    opened = corrected(tiny_model_dir, tmp_path / "open", keys_from=TEXTS[:1], threshold=-1.0)
    assert np.abs(logits(opened, TEXTS) - parent).min(axis=1).max() > 0.1
    # A radius between: the key's own text is inside, so its logits change; the other
    # texts, scored in the same batch, are outside (here) and keep the parent's: the
    # gate opens per text, not per batch (a batch mixes customers' texts).
    keyed = corrected(tiny_model_dir, tmp_path / "keyed", keys_from=TEXTS[:1], threshold=0.9)
    batch = logits(keyed, TEXTS)
    changed = np.abs(batch - parent).max(axis=1) > 1e-4
    assert changed.tolist() == [True, False, False, False]
    np.testing.assert_allclose(batch[1:], parent[1:], atol=1e-6)


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_the_onnx_export_of_a_correction_computes_what_torch_does(
    tiny_model_dir: Path, tmp_path: Path, quantize: str
) -> None:
    directory = corrected(tiny_model_dir, tmp_path / "c", keys_from=TEXTS[:1], threshold=0.9)
    rendered = [TEMPLATE.render(text) for text in TEXTS]
    torch_scores = FineTunedClassifier(directory, version="c").predict(rendered, TEMPLATE)
    onnx_scores = FineTunedClassifier(
        directory, version="c", backend="onnx", quantize=quantize,  # type: ignore[arg-type]
        onnx_cache_dir=tmp_path / f"onnx-{quantize}",
    ).predict(rendered, TEMPLATE)  # fmt: skip
    plain = FineTunedClassifier(tiny_model_dir, version="p").predict(rendered, TEMPLATE)
    tolerance = 1e-4 if quantize == "none" else 0.05
    for got, want in zip(onnx_scores, torch_scores, strict=True):
        assert got == pytest.approx(want, abs=tolerance)
    # The keyed texts are corrected, through ONNX too.
    assert torch_scores[0] != pytest.approx(plain[0], abs=1e-3)
    assert onnx_scores[0] != pytest.approx(plain[0], abs=1e-3)


def test_a_correction_links_its_parents_model_files_not_its_exports(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What lies beside a shipped model's files (its ONNX export, the compact
    vocabulary it serves with, their markers) is the parent's cache, not the model."""
    parent = tmp_path / "parent"
    parent.mkdir()
    for source in tiny_model_dir.iterdir():
        (parent / source.name).write_bytes(source.read_bytes())
    exports = [
        f"model.{EXPORT_LAYOUT}.{QUANTIZED_LAYOUT['int8']}.onnx",
        UNIGRAM_FILE,
        f".{UNIGRAM_FILE}.complete.json",
    ]
    for name in exports:
        (parent / name).write_text("an export")
    corrections.link_parent(parent, tmp_path / "corrected")
    linked = sorted(path.name for path in (tmp_path / "corrected").iterdir())
    assert linked == sorted(path.name for path in tiny_model_dir.iterdir())


def test_the_radius_keeps_the_asked_share_of_keys_within_reach_of_another() -> None:
    keys = torch.nn.functional.normalize(
        torch.randn(200, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    threshold = radius(keys, coverage=0.9)
    similarity = keys @ keys.T
    similarity.fill_diagonal_(-1)
    within = (similarity.max(dim=-1).values >= threshold).float().mean()
    assert float(within) == pytest.approx(0.9, abs=0.01)
    assert radius(keys[:1]) == 1.0
