"""How int8 quantization changes the shipped model's answers, and at what speed.

The shipped model is exported to ONNX in fp32 (as ``model.onnx_runtime`` exports it)
and quantized by ONNX Runtime's dynamic quantizer in each variant; each file is then
run in-process with the serving session options on one thread and the serving
tokenizer, on the evaluation sets (tweet test, SST-2 dev, XLM-T val en/fr/de/es)
and on short review snippets (SST-2 train phrases of 2-5 words, as in
``bench.flywheel --scenario domain``). Per variant: macro-F1 per set, the share of
texts whose answer differs from the fp32 file's, file size, ms per text in batches
of 32 (as served, and with all of ONNX Runtime's fusions) and for a lone text.

    python -m bench.quantization [--variants per-tensor per-channel ...]

Prints a table and writes bench/results/quantization.json.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, sst2, tweets, write_result, xlmt
from core.logs import configure_logging
from core.settings import Settings
from model.labels import LABELS
from model.onnx_runtime import OnnxLogits, _export, _quantize
from model.shipped import materialize, shipped_for_base
from model.templates import TemplateRegistry
from model.tokenization import ChunkTokenizer
from training.evaluate import evaluate
from training.examples import Example

logger = logging.getLogger(__name__)

THREE_CLASS = ("negative", "neutral", "positive")
BINARY = ("negative", "positive")
# quantize_dynamic's arguments per variant (weights QInt8 in all of them); "per-row" is
# what sentiloop serves (``model.onnx_runtime``): per-channel-reduce-range with a scale
# per row for the activations (``model.row_quantization``).
VARIANTS: dict[str, dict[str, Any]] = {
    "per-tensor": {},
    "per-channel": {"per_channel": True},
    "per-channel-reduce-range": {"per_channel": True, "reduce_range": True},
    "per-tensor-reduce-range": {"reduce_range": True},
    "per-row": {},
}


TIMINGS = ("megabytes", "ms_per_text_batch_32", "ms_per_text_batch_32_every_fusion", "ms_lone_text")


def evaluation_sets(seed: int) -> dict[str, tuple[list[Example], tuple[str, ...]]]:
    rng = random.Random(seed)
    snippets = [e for e in sst2("train") if 2 <= len(e.text.split()) <= 5]
    rng.shuffle(snippets)
    sets = {
        "tweet_test": (rng.sample(tweets("test"), 1000), THREE_CLASS),
        "sst2_dev": (sst2("dev"), BINARY),
        "review_snippets": (snippets[:800], BINARY),
    }
    for language in ("en", "fr", "de", "es"):
        sets[f"xlmt_val_{language}"] = (xlmt(language, "val"), THREE_CLASS)
    return sets


def seconds_with_every_fusion(path: Path, tokenizer: ChunkTokenizer, rows: list[str]) -> float:
    """The file in batches of 32 with ONNX Runtime's default fusions (serving turns
    ``model.onnx_runtime.DISABLED_OPTIMIZERS`` off), one thread."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    started = time.perf_counter()
    for _, inputs in tokenizer.chunks(rows, 32):
        session.run(["logits"], {name: inputs[name].astype(np.int64) for name in names})
    return time.perf_counter() - started


def run_file(path: Path, tokenizer: ChunkTokenizer, texts: dict[str, list[str]]) -> dict[str, Any]:
    session = OnnxLogits(path, threads=1)
    logits: dict[str, np.ndarray] = {}
    seconds = 0.0
    for name, rows in texts.items():
        out = np.zeros((len(rows), len(LABELS)), dtype=np.float32)
        started = time.perf_counter()
        for chunk, inputs in tokenizer.chunks(rows, 32):
            out[list(chunk)] = session(inputs)
        if name == "tweet_test":
            seconds = time.perf_counter() - started
        logits[name] = out
    lone = texts["tweet_test"][:200]
    started = time.perf_counter()
    for text in lone:
        for _, inputs in tokenizer.chunks([text], 1):
            session(inputs)
    lone_seconds = time.perf_counter() - started
    every_fusion = seconds_with_every_fusion(path, tokenizer, texts["tweet_test"])
    return {
        "logits": logits,
        "ms_per_text_batch_32": round(1000 * seconds / len(texts["tweet_test"]), 2),
        "ms_per_text_batch_32_every_fusion": round(
            1000 * every_fusion / len(texts["tweet_test"]), 2
        ),
        "ms_lone_text": round(1000 * lone_seconds / len(lone), 2),
        "megabytes": round(path.stat().st_size / 1e6, 1),
    }


def macro_f1(rows: list[Example], labels: tuple[str, ...], logits: np.ndarray) -> float:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    scores = [dict(zip(LABELS, row.tolist(), strict=True)) for row in probabilities]
    # The 3-class answer judged on the set's labels: "neutral" to a binary row is wrong.
    metrics = evaluate([e.label for e in rows], scores, labels=THREE_CLASS)
    return round(sum(metrics["per_class"][c]["f1"] for c in labels) / len(labels), 4)


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    configure_logging()
    settings = Settings()
    shipped = shipped_for_base("multilingual-e5-small")
    assert shipped is not None
    model_dir = materialize(shipped, settings.cache_dir)
    template = TemplateRegistry.load(settings.resolved_templates_dir).get("v1")
    sets = evaluation_sets(args.seed)
    texts = {name: [template.render(e.text) for e in rows] for name, (rows, _) in sets.items()}
    from transformers import AutoTokenizer

    tokenizer = ChunkTokenizer.from_transformers(
        AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True), settings.max_length
    )
    result: dict[str, Any] = {"machine": machine(), "arguments": vars(args), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="sentiloop-quantization-") as scratch:
        fp32_file = Path(scratch) / "fp32.onnx"
        _export(model_dir, fp32_file)
        reference = run_file(fp32_file, tokenizer, texts)
        files = {"fp32": reference}
        for variant in args.variants:
            path = Path(scratch) / f"{variant}.onnx"
            if variant == "per-row":
                _quantize(fp32_file, path)
            else:
                quantize_dynamic(str(fp32_file), str(path), weight_type=QuantType.QInt8,
                                 **VARIANTS[variant])  # fmt: skip
            files[variant] = run_file(path, tokenizer, texts)
            logger.info("measured %s", variant)
    for variant, measured in files.items():
        entry: dict[str, Any] = {key: measured[key] for key in TIMINGS}
        for name, (rows, labels) in sets.items():
            logits = measured["logits"][name]
            changed = logits.argmax(axis=1) != reference["logits"][name].argmax(axis=1)
            entry[name] = {
                "macro_f1": macro_f1(rows, labels, logits),
                "answers_changed_vs_fp32": round(float(changed.mean()), 4),
            }
        result["variants"][variant] = entry
    write_result("quantization", result)
    names = list(sets)
    print("variant | MB | ms/text b32 | b32, every fusion | ms lone | " + " | ".join(names))
    for variant, entry in result["variants"].items():
        cells = [
            f"{entry[n]['macro_f1']:.3f} ({100 * entry[n]['answers_changed_vs_fp32']:.1f}%)"
            for n in names
        ]
        print(
            f"{variant} | {entry['megabytes']} | {entry['ms_per_text_batch_32']} | "
            f"{entry['ms_per_text_batch_32_every_fusion']} | "
            f"{entry['ms_lone_text']} | " + " | ".join(cells)
        )


if __name__ == "__main__":
    main()
