"""Tokenization for inference: length-sorted chunks, each padded to its own longest text.

``ChunkTokenizer`` encodes with the tokenizer's Rust backend one text at a time
(serially: the backend's thread pool only adds hand-offs for the few texts of a
serving batch) and pads each chunk itself with numpy. The transformers call
around the same backend cost ~25 µs of Python per text, on the thread that
feeds the model (README, "Performance").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

# (positions of the chunk's texts in the input, model inputs as int64 arrays)
Chunk = tuple[list[int], dict[str, np.ndarray]]


class ChunkTokenizer:
    def __init__(self, tokenizer: Any, max_length: int) -> None:
        """``tokenizer``: a transformers fast tokenizer (its backend is copied, not changed)."""
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        backend.enable_truncation(max_length)
        self._backend = backend
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._names = list(tokenizer.model_input_names)

    def chunks(self, texts: Sequence[str], size: int) -> Iterator[Chunk]:
        encodings = [self._backend.encode(text) for text in texts]
        order = sorted(range(len(texts)), key=lambda index: len(encodings[index].ids))
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            width = max(len(encodings[index].ids) for index in chunk)
            ids = np.full((len(chunk), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            types = np.zeros((len(chunk), width), dtype=np.int64)
            for row, index in enumerate(chunk):
                encoding = encodings[index]
                length = len(encoding.ids)
                ids[row, :length] = encoding.ids
                mask[row, :length] = 1
                types[row, :length] = encoding.type_ids
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            yield chunk, {name: arrays[name] for name in self._names if name in arrays}
