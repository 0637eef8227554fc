"""Tokenization for inference: length-sorted chunks, each padded to its own longest text.

``ChunkTokenizer`` encodes one text at a time (serially: the Rust backend's thread
pool only adds hand-offs for the few texts of a serving batch) and pads each chunk
itself with numpy. The transformers call around the same backend cost ~25 µs of
Python per text, on the thread that feeds the model (README, "Performance").

What encodes a text: the tokenizer's ``tokenizers`` backend (``RustEncoder``), or
for the multilingual models' SentencePiece vocabulary ``model.unigram``'s exact
stand-in, which holds ~45 MB where ``tokenizers`` holds ~270 MB. A model served by
ONNX Runtime is tokenized from the files of its directory (``serving_tokenizer``),
without transformers; training and the torch path start from the transformers
tokenizer they load anyway (``ChunkTokenizer.from_transformers``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer

from core.cache_entry import build_file, defect, file_marker
from core.file_lock import exclusive_file_lock
from model.unigram import FORMAT, UnigramEncoder, compact, layout_problem

# (positions of the chunk's texts in the input, model inputs as int64 arrays)
Chunk = tuple[list[int], dict[str, np.ndarray]]
# The compact vocabulary of a Unigram tokenizer (``model.unigram``), beside the ONNX export.
UNIGRAM_FILE = f"tokenizer.unigram-v{FORMAT}.json"


class TextEncoder(Protocol):
    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and token type ids, special tokens added, truncated."""
        ...

    def token_id(self, token: str) -> int | None: ...


class RustEncoder:
    """A ``tokenizers.Tokenizer`` of its own, set to truncate to ``max_length``."""

    def __init__(self, backend: Tokenizer, max_length: int) -> None:
        backend.no_padding()
        backend.enable_truncation(max_length)
        self._backend = backend

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        encoding = self._backend.encode(text)
        return encoding.ids, encoding.type_ids

    def token_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)


class ChunkTokenizer:
    def __init__(self, encoder: TextEncoder, *, pad_id: int, input_names: Sequence[str]) -> None:
        """``input_names``: the arrays the model takes, of input_ids, attention_mask
        and token_type_ids."""
        self.encoder = encoder
        self._pad_id = pad_id
        self._names = list(input_names)

    @classmethod
    def from_transformers(cls, tokenizer: Any, max_length: int) -> ChunkTokenizer:
        """From a transformers fast tokenizer: its backend, pad token and input names."""
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # A copy: the transformers tokenizer's own backend is left as it was.
        encoder = RustEncoder(Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), max_length)
        return cls(encoder, pad_id=pad_id, input_names=tokenizer.model_input_names)

    def chunks(self, texts: Sequence[str], size: int) -> Iterator[Chunk]:
        encodings = [self.encoder.encode(text) for text in texts]
        order = sorted(range(len(texts)), key=lambda index: len(encodings[index][0]))
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            width = max(len(encodings[index][0]) for index in chunk)
            ids = np.full((len(chunk), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            types = np.zeros((len(chunk), width), dtype=np.int64)
            for row, index in enumerate(chunk):
                token_ids, type_ids = encodings[index]
                length = len(token_ids)
                ids[row, :length] = token_ids
                mask[row, :length] = 1
                types[row, :length] = type_ids
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            yield chunk, {name: arrays[name] for name in self._names if name in arrays}


def _pad_token(directory: Path) -> str | None:
    """The pad token transformers reads from a saved tokenizer's files."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if path.is_file():
            token = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str):
                return token
    return None


def unigram_file(model_dir: Path, cache_dir: Path, *, checksums: bool = False) -> Path | None:
    """The compact vocabulary (``model.unigram``) of ``model_dir``'s tokenizer, cached in
    ``cache_dir`` beside its ONNX export and sealed like it (``core.cache_entry``): made
    when missing or not whole; None when ``model.unigram`` cannot stand in for it."""
    target = cache_dir / UNIGRAM_FILE
    if defect(file_marker(target), checksums=checksums) is None:
        return target
    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if layout_problem(spec) is not None:
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_file_lock(cache_dir / ".lock"):
        problem = defect(file_marker(target), checksums=checksums)
        if problem is not None:  # else another process made it while this one waited
            text = json.dumps(compact(spec), ensure_ascii=False)

            def write(partial: Path) -> None:
                partial.write_text(text, encoding="utf-8")

            build_file(target, write, problem)
    return target


def serving_tokenizer(
    model_dir: Path, cache_dir: Path, max_length: int, *, input_names: Sequence[str]
) -> ChunkTokenizer:
    """The tokenizer of the model in ``model_dir`` from its files (tokenizer.json as
    transformers saved it beside the model, tokenizer_config.json), without
    transformers: ``model.unigram`` from the compact vocabulary in ``cache_dir`` where
    it stands in, else ``tokenizers``."""
    compact_file = unigram_file(model_dir, cache_dir)
    encoder: TextEncoder
    if compact_file is not None:
        data = json.loads(compact_file.read_text(encoding="utf-8"))
        encoder = UnigramEncoder(data, max_length)
    else:
        encoder = RustEncoder(Tokenizer.from_file(str(model_dir / "tokenizer.json")), max_length)
    pad_token = _pad_token(model_dir)
    pad_id = encoder.token_id(pad_token) if pad_token is not None else None
    return ChunkTokenizer(encoder, pad_id=pad_id or 0, input_names=input_names)
