"""ChunkTokenizer gives the model exactly what the transformers tokenizer would."""

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from model.tokenization import ChunkTokenizer

TEXTS = [
    "fine, thanks",
    "",
    "Le service était lent 😡 mais le produit est très bien",
    "word " * 300,  # longer than max_length: truncated like the reference
    "ok",
    "an order that arrived two weeks late and broken, and support never answered",
    "   spaces   around   ",
]


@pytest.mark.parametrize("size", [1, 3, 4, 64])
def test_chunks_match_the_transformers_tokenizer(tiny_model_dir: Path, size: int) -> None:
    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    tokenizer = ChunkTokenizer(reference, max_length=32)
    seen: list[int] = []
    for chunk, inputs in tokenizer.chunks(TEXTS, size):
        assert 1 <= len(chunk) <= size
        seen += chunk
        expected = reference(
            [TEXTS[index] for index in chunk],
            padding=True, truncation=True, max_length=32, return_tensors="np",
        )  # fmt: skip
        assert sorted(inputs) == sorted(expected)
        for name, array in inputs.items():
            assert array.dtype == np.int64
            np.testing.assert_array_equal(array, expected[name], err_msg=name)
    assert sorted(seen) == list(range(len(TEXTS)))


def test_chunks_group_texts_of_similar_length(tiny_model_dir: Path) -> None:
    reference = AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)
    texts = ["a " * n for n in (30, 1, 20, 2, 31, 3)]
    widths = [
        inputs["input_ids"].shape[1]
        for _, inputs in ChunkTokenizer(reference, max_length=64).chunks(texts, 3)
    ]
    assert widths == sorted(widths)
    assert widths[0] < 10  # the three short texts share a chunk, padded to their own length
