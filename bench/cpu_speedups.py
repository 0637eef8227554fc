"""CPU inference speed-ups, measured one at a time on the same model and texts.

Variants (cumulative): a transformers pipeline called per text (naive); batches
of 32 padded to max length under no_grad; + dynamic padding; + length sorting;
+ torch.inference_mode; then sentiloop's FineTunedClassifier on each runtime:
torch fp32, torch int8 (dynamic quantization of the linear layers), ONNX
Runtime fp32 and ONNX Runtime int8 (the serving default), at 2 and 1 threads,
with the latency of one text alone, and ONNX Runtime int8 on one thread at
several chunk sizes (texts per model call, length-sorted). Accuracy of every runtime on
tweet_sentiment_extraction test is reported against torch fp32.

    python -m bench.cpu_speedups --model-dir PATH [--texts 1000]

PATH: a fine-tuned model directory (e.g. one in the BentoML store); without it
the packaged encoder with a random head is used (speed only).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bench.common import machine, tweets, write_result
from bench.serve import build_model
from core.logs import configure_logging
from core.settings import Settings
from model.classifiers import CPU_CHUNK_TEXTS, Backend, FineTunedClassifier, Quantization
from model.templates import TemplateRegistry
from training.evaluate import evaluate

logger = logging.getLogger("bench.cpu_speedups")


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def timed(run: Callable[[], Any], texts: int) -> float:
    run()  # warm-up
    started = time.perf_counter()
    run()
    return texts / (time.perf_counter() - started)


def batched(
    model: Any, tokenizer: Any, texts: list[str], *, pad: str, sort: bool, mode: Any
) -> None:
    order = (
        sorted(range(len(texts)), key=lambda i: len(texts[i])) if sort else list(range(len(texts)))
    )
    with mode():
        for start in range(0, len(order), 32):
            chunk = [texts[i] for i in order[start : start + 32]]
            encoded = tokenizer(
                chunk, padding=pad, truncation=True, max_length=128, return_tensors="pt"
            )
            model(**encoded)


CHUNK_SIZES = (1, 2, 4, 8, 16, 32)
RUNTIMES: tuple[tuple[Backend, Quantization], ...] = (
    ("torch", "none"), ("torch", "int8"), ("onnx", "none"), ("onnx", "int8"),
)  # fmt: skip


def one_text_ms(classifier: FineTunedClassifier, texts: list[str], template: Any) -> float:
    """Median latency of scoring one text alone (what a lone request costs)."""
    latencies = []
    for text in texts:
        started = time.perf_counter()
        classifier.predict([text], template)
        latencies.append((time.perf_counter() - started) * 1000)
    return statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--texts", type=int, default=1000)
    args = parser.parse_args()
    configure_logging()
    model_dir = args.model_dir or build_model(Path(tempfile.mkdtemp()) / "model")
    template = TemplateRegistry.load(Settings().resolved_templates_dir).get("v1")
    rows = tweets("test")
    texts = [template.render(e.text) for e in rows[: args.texts]]
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    naive = pipeline("text-classification", model=str(model_dir), top_k=None)
    cache = Path(tempfile.mkdtemp(prefix="sentiloop-onnx-"))
    runtimes: dict[str, FineTunedClassifier] = {}
    n = len(texts)
    speeds: dict[str, float] = {}
    single_ms: dict[str, float] = {}
    with threads(2):
        speeds["naive pipeline, one text per call"] = timed(
            lambda: [naive(t) for t in texts[:200]], 200
        )
        speeds["batch 32, pad to max length, no_grad"] = timed(
            lambda: batched(
                model, tokenizer, texts, pad="max_length", sort=False, mode=torch.no_grad
            ),
            n,
        )
        speeds["+ dynamic padding"] = timed(
            lambda: batched(model, tokenizer, texts, pad="longest", sort=False, mode=torch.no_grad),
            n,
        )
        speeds["+ length sorting"] = timed(
            lambda: batched(model, tokenizer, texts, pad="longest", sort=True, mode=torch.no_grad),
            n,
        )
    for backend, quantize in RUNTIMES:
        for count in (2, 1):
            name = f"sentiloop {backend} {quantize}, {count} thread{'s' if count > 1 else ''}"
            with threads(count):
                classifier = FineTunedClassifier(
                    model_dir, version=name, backend=backend, quantize=quantize,
                    onnx_cache_dir=cache / quantize, threads=count,
                )  # fmt: skip
                speeds[name] = timed(lambda c=classifier: c.predict(texts, template), n)  # type: ignore[misc]
                single_ms[name] = one_text_ms(classifier, texts[:200], template)
            runtimes[f"{backend} {quantize}"] = classifier
    # Chunk size of the serving default (ONNX int8, one thread per call).
    chunked = runtimes["onnx int8"]
    chunk_speeds: dict[str, float] = {}
    with threads(1):
        for size in CHUNK_SIZES:
            chunked.chunk_texts = size
            chunk_speeds[str(size)] = timed(lambda: chunked.predict(texts, template), n)
    chunked.chunk_texts = CPU_CHUNK_TEXTS
    everything = [template.render(e.text) for e in rows]
    truth = [e.label for e in rows]
    accuracy = {
        name: evaluate(truth, classifier.predict(everything, template))["accuracy"]
        for name, classifier in runtimes.items()
    }
    reference = accuracy["torch none"]
    change = {name: (value - reference) * 100 for name, value in accuracy.items()}
    result = {
        "machine": machine(),
        "model_dir": str(model_dir),
        "texts": n,
        "texts_per_s": speeds,
        "one_text_p50_ms": single_ms,
        "onnx_int8_1_thread_texts_per_s_by_chunk_size": chunk_speeds,
        "tweet_test_accuracy": accuracy,
        "accuracy_change_points_vs_torch_fp32": change,
    }
    write_result("cpu_speedups", result)
    base = speeds["naive pipeline, one text per call"]
    for name, speed in speeds.items():
        alone = f"  one text {single_ms[name]:5.2f} ms" if name in single_ms else ""
        print(f"{name:<46} {speed:8.1f} texts/s  ({speed / base:4.1f}x naive){alone}")
    for chunk_size, speed in chunk_speeds.items():
        print(f"onnx int8, 1 thread, chunks of {chunk_size:>2}: {speed:8.1f} texts/s")
    for name, value in accuracy.items():
        print(f"tweet test accuracy {name:<12} {value:.4f} ({change[name]:+.2f} points)")


if __name__ == "__main__":
    main()
