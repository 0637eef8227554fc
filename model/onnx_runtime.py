"""ONNX Runtime execution of a saved sequence-classification model (the CPU fast path).

A model directory saved by training is exported to ONNX once (opset 17,
dynamic batch and sequence axes), optionally quantized to int8 (``QUANTIZED_LAYOUT``;
that file is opset 21 with ONNX Runtime's ``com.microsoft`` operators), and
cached under ``<cache>/<key>/``; every worker process of the machine reuses the
file (an exclusive file lock makes one process export while the others wait).
Each file is renamed into place, then sealed by a completion marker beside it
(``core.cache_entry``); a file without one, or whose size differs, is exported
again.

Beside each file: its lookup tables (the initializers only ``Gather`` nodes read,
the token embeddings: 92 MB of the shipped model's 118 MB int8 file) in an
``.npz``, so that a second session of the file can share them rather than hold
its own copy (``OnnxLogits``'s session for a batch that runs alone).
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
# The same for the quantization. Weights: int8 with a scale per output channel (per
# tensor, "model.opset17-eager.int8.onnx", turned 6-11% of the shipped model's fp32
# answers on XLM-T val), in 7 bits (-64..64): on a CPU without VNNI (AVX2 only)
# ONNX Runtime multiplies 8-bit activations by 8-bit weights in pairs summed into
# 16 bits, which saturate (255 * 127 * 2 > 32767), and the 8-bit file's answers
# there moved by up to 0.07 from fp32; with 7-bit weights the sums fit, so every x86
# CPU computes the same integers. Activations: a scale per row, so that a text's
# scores do not depend on the texts batched with it (``model.row_quantization``;
# with one scale per call, "int8-per-channel-7bit", 13 of 300 tweets changed answer
# with 7 batch-mates). README "Quantization".
QUANTIZED_LAYOUT = {"int8": "int8-per-channel-7bit-per-row"}
# ONNX Runtime's fusion of a residual Add and LayerNormalization (SkipLayerNormalization)
# made int8 files' batches of 32 10-27% slower on the CPU measured (AMD EPYC, AVX-512
# VNNI; bench/quantization.py's "every fusion" column) and lone texts no faster; fp32
# within noise.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
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
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from model.row_quantization import quantize_activations_per_row

    # "<file>.<pid>.per-call.partial" beside "<file>.<pid>.partial": a process killed
    # before the finally leaves it where build_file's sweep of stale partials finds it.
    per_call = destination.with_suffix(f".per-call{destination.suffix}")
    try:
        quantize_dynamic(
            str(source),
            str(per_call),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
        )
        dynamic = onnx.load(str(per_call))
        rewritten = quantize_activations_per_row(dynamic, rows_of=MODEL_INPUTS[0])
        if not _runs(rewritten):
            logger.warning("zero points shared by rows failed in %s; one per activation", source)
            rewritten = quantize_activations_per_row(dynamic)
        onnx.save(rewritten, str(destination))
    finally:
        per_call.unlink(missing_ok=True)


def _runs(model: Any) -> bool:
    """Whether ONNX Runtime runs ``model`` on two batches of token ids of other shapes."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        for batch, length in ((2, 5), (3, 2)):
            ids = np.ones((batch, length), dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": ids, "token_type_ids": ids * 0}
            session.run(None, {node.name: feed[node.name] for node in session.get_inputs()})
    except Exception as error:  # onnxruntime's own error types, not importable by name
        logger.info("the rewritten file does not run: %s", error)
        return False
    return True


def _write_lookup_tables(model_file: Path, destination: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_file))
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    tables = {
        tensor.name: numpy_helper.to_array(tensor)
        for tensor in model.graph.initializer
        if readers.get(tensor.name) == {"Gather"}
    }
    with destination.open("wb") as file:
        np.savez(file, **tables)  # type: ignore[arg-type]


def lookup_tables_file(model_file: Path) -> Path:
    return model_file.with_name(f"{model_file.name}.lookup-tables.npz")


def onnx_model_file(
    model_dir: Path, cache_dir: Path, *, quantize: str, checksums: bool = False
) -> Path:
    """The cached ONNX file of ``model_dir`` (``quantize``: "none" or "int8"), made if
    missing or not whole (``checksums``: read every byte to tell, not only its size),
    with its lookup tables beside it (``lookup_tables_file``). An int8 file is
    quantized from an fp32 export, which is removed afterwards."""
    fp32 = cache_dir / f"model.{EXPORT_LAYOUT}.onnx"
    target = (
        fp32
        if quantize == "none"
        else cache_dir / f"model.{EXPORT_LAYOUT}.{QUANTIZED_LAYOUT[quantize]}.onnx"
    )
    tables = lookup_tables_file(target)

    def whole() -> bool:
        return all(defect(file_marker(f), checksums=checksums) is None for f in (target, tables))

    if whole():
        return target
    with exclusive_file_lock(cache_dir / ".lock"):
        if whole():  # another process made them while this one waited
            return target
        problem = defect(file_marker(target), checksums=checksums)
        if problem is None:  # the file is whole, its tables not (or an earlier version's)
            tables_problem = defect(file_marker(tables), checksums=checksums)
            assert tables_problem is not None
            build_file(tables, lambda partial: _write_lookup_tables(target, partial),
                       tables_problem)  # fmt: skip
            logger.info("made the lookup tables of %s (%s)", target, tables_problem)
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
        build_file(tables, lambda partial: _write_lookup_tables(target, partial), problem)
        logger.info("exported %s to %s in %.1f s", model_dir, target, time.perf_counter() - started)
    return target


def cached_onnx_logits(
    model_dir: Path,
    cache_dir: Path,
    *,
    quantize: str,
    threads: int | None,
    alone_threads: int | None = None,
) -> OnnxLogits:
    """The ONNX Runtime session(s) of ``model_dir``'s cached export. A file of the right
    size can still be damaged: when ONNX Runtime refuses it, every byte is compared
    with the sealed checksum and a file that differs is exported again (once)."""
    path = onnx_model_file(model_dir, cache_dir, quantize=quantize)
    try:
        return OnnxLogits(path, threads=threads, alone_threads=alone_threads)
    except Exception as error:  # onnxruntime's own error types, not importable by name
        logger.warning("ONNX Runtime refused %s (%s); checking it", path, error)
    checked = onnx_model_file(model_dir, cache_dir, quantize=quantize, checksums=True)
    return OnnxLogits(checked, threads=threads, alone_threads=alone_threads)


def _session(path: Path, threads: int | None, *, spinning: bool, shared: Mapping[str, Any]) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # Spinning threads went on spinning for tens of milliseconds after the call, taking a
    # core from the API worker answering it: they stop when the call returns.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    for name, value in shared.items():
        options.add_initializer(name, value)
    return onnxruntime.InferenceSession(
        str(path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(DISABLED_OPTIMIZERS),
    )


class OnnxLogits:
    """Logits of an ONNX sequence classifier for tokenized numpy inputs.

    One session runs ``threads`` threads whose idle threads do not spin: model calls
    run side by side (one per model process), and spinning threads would take CPU
    from the others and the HTTP workers. With ``alone_threads`` (more than one), a
    second session runs a call that is alone on the machine (``alone=True``: no
    other batch in flight) on that many threads, which spin between the operators
    of the call: a lone text takes ~30% less time, what a plain service with ONNX
    Runtime's default threads gets. The sessions share the file's lookup tables
    (its token embeddings), so the second one costs ~30 MB (the shipped model), not
    ~120.
    """

    def __init__(
        self, path: Path, *, threads: int | None, alone_threads: int | None = None
    ) -> None:
        import onnxruntime

        shared: dict[str, Any] = {}
        two_sessions = alone_threads is not None and alone_threads > 1
        if two_sessions:
            with np.load(lookup_tables_file(path)) as tables:
                shared = {
                    name: onnxruntime.OrtValue.ortvalue_from_numpy(tables[name])
                    for name in tables.files
                }
        self._session = _session(path, threads, spinning=False, shared=shared)
        self._alone = (
            _session(path, alone_threads, spinning=True, shared=shared) if two_sessions else None
        )
        self._shared = shared  # ONNX Runtime reads the values; they must outlive the sessions
        # The initializers both sessions read from one copy (none with one session).
        self.shared_tables: tuple[str, ...] = tuple(shared)
        self.input_names: Sequence[str] = [node.name for node in self._session.get_inputs()]

    def __call__(self, inputs: Mapping[str, np.ndarray], *, alone: bool = False) -> np.ndarray:
        feed = {name: inputs[name].astype(np.int64, copy=False) for name in self.input_names}
        session = self._alone if alone and self._alone is not None else self._session
        outputs: list[Any] = session.run(["logits"], feed)
        return np.asarray(outputs[0], dtype=np.float32)
