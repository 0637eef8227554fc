"""CPU inference speed-ups, measured one at a time on the same model and texts.

Variants (cumulative): a transformers pipeline called per text (naive); batches
of 32 padded to max length under no_grad; + dynamic padding; + length sorting;
+ torch.inference_mode (sentiloop's FineTunedClassifier); + dynamic int8
quantization of the linear layers; each at 1 and 2 torch threads where noted.
Accuracy of fp32 vs int8 on tweet_sentiment_extraction test is reported.

    python -m bench.cpu_speedups --model-dir PATH [--texts 1000]

PATH: a fine-tuned model directory (e.g. one in the BentoML store); without it
the packaged encoder with a random head is used (speed only).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from bench.common import machine, tweets, write_result
from bench.serve import build_model
from sentiloop.logging_setup import configure_logging
from sentiloop.settings import Settings
from service.classifiers import FineTunedClassifier
from service.templates import TemplateRegistry
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
    fp32 = FineTunedClassifier(model_dir, version="fp32")
    int8 = FineTunedClassifier(model_dir, version="int8", quantize="int8")
    n = len(texts)
    speeds: dict[str, float] = {}
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
        speeds["+ inference_mode (sentiloop, 2 threads)"] = timed(
            lambda: fp32.predict(texts, template), n
        )
        speeds["+ dynamic int8 quantization (2 threads)"] = timed(
            lambda: int8.predict(texts, template), n
        )
    with threads(1):
        speeds["sentiloop fp32, 1 thread"] = timed(lambda: fp32.predict(texts, template), n)
        speeds["sentiloop int8, 1 thread"] = timed(lambda: int8.predict(texts, template), n)
    everything = [template.render(e.text) for e in rows]
    truth = [e.label for e in rows]
    accuracy = {
        name: evaluate(truth, classifier.predict(everything, template))["accuracy"]
        for name, classifier in (("fp32", fp32), ("int8", int8))
    }
    change = (accuracy["int8"] - accuracy["fp32"]) * 100
    result = {
        "machine": machine(),
        "model_dir": str(model_dir),
        "texts": n,
        "texts_per_s": speeds,
        "tweet_test_accuracy": accuracy,
        "int8_accuracy_change_points": change,
    }
    write_result("cpu_speedups", result)
    base = speeds["naive pipeline, one text per call"]
    for name, speed in speeds.items():
        print(f"{name:<46} {speed:8.1f} texts/s  ({speed / base:4.1f}x naive)")
    print(f"tweet test accuracy fp32 {accuracy['fp32']:.4f}  int8 {accuracy['int8']:.4f}  "
          f"({result['int8_accuracy_change_points']:+.2f} points)")  # fmt: skip


if __name__ == "__main__":
    main()
