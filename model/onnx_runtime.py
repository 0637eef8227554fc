"""ONNX Runtime execution of a saved sequence-classification model (the CPU fast path).

A model directory saved by training is exported to ONNX once (opset 17,
dynamic batch and sequence axes), optionally quantized to dynamic int8, and
cached under ``<cache>/<key>/``; every worker process of the machine reuses the
file (an exclusive file lock makes one process export while the others wait).
Each file is renamed into place, then sealed by a completion marker beside it
(``core.cache_entry``); a file without one, or whose size differs, is exported
again.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.cache_entry import build_file, defect, file_marker
from core.file_lock import exclusive_file_lock

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
# Part of the cached file names: a change to how models are exported (opset,
# attention implementation) makes every machine export afresh.
EXPORT_LAYOUT = f"opset{ONNX_OPSET}-eager"
# The same for the quantization: per-tensor int8 weights (the earlier
# "model.opset17-eager.int8.onnx") turned 6-11% of the shipped model's fp32
# answers on XLM-T val and 7.5% on short reviews; a scale per output channel halves
# that at the same speed and size (README "Quantization").
QUANTIZED_LAYOUT = {"int8": "int8-per-channel"}
# What a BERT-like sequence classifier may take, in the order the export passes them.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _export(model_dir: Path, destination: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from model.correction_modules import logits_module

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    # Eager attention exports as plain MatMul/Softmax: fewer nodes than the SDPA
    # path (its mask handling adds Where/IsNaN per layer), ~8% faster under ONNX Runtime.
    # A corrected model (``model.corrections``) exports with its gate and residual.
    module = logits_module(model_dir, attn_implementation="eager")
    sample = tokenizer(["an example", "a longer example text"], padding=True, return_tensors="pt")
    names = [name for name in MODEL_INPUTS if name in sample]

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.module(**dict(zip(names, tensors, strict=True)))

    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in names}
    # The tracer warns about Python branches on shapes; for an encoder they do not
    # depend on the input (tests compare ONNX with torch on other shapes).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(),
            tuple(sample[name] for name in names),
            str(destination),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**axes, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def _quantize(source: Path, destination: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(destination), weight_type=QuantType.QInt8, per_channel=True)


def onnx_model_file(
    model_dir: Path, cache_dir: Path, *, quantize: str, checksums: bool = False
) -> Path:
    """The cached ONNX file of ``model_dir`` (``quantize``: "none" or "int8"), made if
    missing or not whole (``checksums``: read every byte to tell, not only its size).
    An int8 file is quantized from an fp32 export, which is removed afterwards."""
    fp32 = cache_dir / f"model.{EXPORT_LAYOUT}.onnx"
    target = (
        fp32
        if quantize == "none"
        else cache_dir / f"model.{EXPORT_LAYOUT}.{QUANTIZED_LAYOUT[quantize]}.onnx"
    )
    if defect(file_marker(target), checksums=checksums) is None:
        return target
    with exclusive_file_lock(cache_dir / ".lock"):
        problem = defect(file_marker(target), checksums=checksums)
        if problem is None:  # another process made it while this one waited
            return target
        started = time.perf_counter()
        exported = defect(file_marker(fp32), checksums=checksums) if target != fp32 else problem
        if exported is not None:
            build_file(fp32, lambda partial: _export(model_dir, partial), exported)
        if target != fp32:
            build_file(target, lambda partial: _quantize(fp32, partial), problem)
            # The fp32 export was only the quantizer's input: ~470 MB for the shipped
            # model that no one serves (the marker first: a half-removed entry is stale).
            file_marker(fp32).unlink(missing_ok=True)
            fp32.unlink(missing_ok=True)
        logger.info("exported %s to %s in %.1f s", model_dir, target, time.perf_counter() - started)
    return target


def cached_onnx_logits(
    model_dir: Path, cache_dir: Path, *, quantize: str, threads: int | None
) -> OnnxLogits:
    """The ONNX Runtime session of ``model_dir``'s cached export. A file of the right
    size can still be damaged: when ONNX Runtime refuses it, every byte is compared
    with the sealed checksum and a file that differs is exported again (once)."""
    path = onnx_model_file(model_dir, cache_dir, quantize=quantize)
    try:
        return OnnxLogits(path, threads=threads)
    except Exception as error:  # onnxruntime's own error types, not importable by name
        logger.warning("ONNX Runtime refused %s (%s); checking it", path, error)
    checked = onnx_model_file(model_dir, cache_dir, quantize=quantize, checksums=True)
    return OnnxLogits(checked, threads=threads)


class OnnxLogits:
    """Logits of an ONNX sequence classifier for tokenized numpy inputs."""

    def __init__(self, path: Path, *, threads: int | None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        # Idle pool threads spinning for work would take CPU from the HTTP workers.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names: Sequence[str] = [node.name for node in self._session.get_inputs()]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name].astype(np.int64, copy=False) for name in self.input_names}
        outputs: list[Any] = self._session.run(["logits"], feed)
        return np.asarray(outputs[0], dtype=np.float32)
