"""The in-process ceiling of a serving file: what the model itself can do on this machine.

One process per core, each with a single-threaded ONNX Runtime session of the
file sentiloop serves (the same session options, ``model.onnx_runtime``),
tokenizes batches of the benchmark's texts with sentiloop's serving tokenizer
(each batch length-sorted and cut into chunks, each chunk padded to its own
longest text, ``model.tokenization``) and runs the model on them, for a fixed time, with no
HTTP, no queueing and no logging. The texts/s of all processes together is the
figure a server is compared with ("sentiloop % of ceiling").

    with Ceiling(onnx_file, model_dir, texts, processes=2) as ceiling:
        ceiling.measure(seconds=4, chunk=4)  # {"texts_per_s": ..., ...}

Run alone, it tells how a text's cost depends on how many texts a model call
gets (a server under load forms batches as large as its requests in flight
allow): the shipped model's file, one process per core, each batch size in
turn, the CPU its processes spent a text beside texts/s.

    python -m bench.ceiling [--batch 4 8 16 32] [--seconds 6] [--rounds 3]

Prints a table and writes bench/results/ceiling-batches.json.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import TracebackType
from typing import Any

# Seconds a process may take to load the tokenizer and the session.
START_TIMEOUT_S = 300.0


def _worker(
    onnx_file: Path,
    model_dir: Path,
    texts: list[str],
    batch: int,
    max_length: int,
    offset: int,
    commands: multiprocessing.Queue[tuple[float, int] | None],
    results: multiprocessing.Queue[tuple[int, int, float]],
) -> None:
    """Load once, then per command ``(seconds, chunk)`` score batches for ``seconds``
    and answer ``(offset, texts scored, seconds taken)``."""
    from model.onnx_runtime import OnnxLogits
    from model.tokenization import serving_tokenizer

    logits = OnnxLogits(onnx_file, threads=1)
    # The tokenizer sentiloop serves the file with (its files sit beside the export).
    tokenizer = serving_tokenizer(
        model_dir, onnx_file.parent, max_length, input_names=logits.input_names
    )
    batches = [texts[start : start + batch] for start in range(0, len(texts), batch)]
    for _, inputs in tokenizer.chunks(batches[0], batch):  # warm-up
        logits(inputs)
    results.put((offset, 0, 0.0))  # ready
    while (command := commands.get()) is not None:
        seconds, chunk = command
        scored, n = 0, offset
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            texts_of_batch = batches[n % len(batches)]
            for _, inputs in tokenizer.chunks(texts_of_batch, chunk):
                logits(inputs)
            scored += len(texts_of_batch)
            n += 1
        results.put((offset, scored, time.perf_counter() - started))


class Ceiling:
    """``processes`` single-threaded model processes, kept up between measurements."""

    def __init__(
        self,
        onnx_file: Path,
        model_dir: Path,
        texts: list[str],
        *,
        processes: int,
        batch: int = 32,
        max_length: int = 128,
    ) -> None:
        # spawn: the benchmark process has threads (torch, the HTTP clients) a fork would copy.
        context = multiprocessing.get_context("spawn")
        self._results: multiprocessing.Queue[tuple[int, int, float]] = context.Queue()
        self._commands: list[multiprocessing.Queue[tuple[float, int] | None]] = []
        self._processes: list[SpawnProcess] = []
        self.processes, self.batch = processes, batch
        stride = max(1, len(texts) // batch // processes)  # each process its own texts
        for index in range(processes):
            commands: multiprocessing.Queue[tuple[float, int] | None] = context.Queue()
            process = context.Process(
                target=_worker,
                args=(onnx_file, model_dir, texts, batch, max_length, index * stride, commands,
                      self._results),
                daemon=True,
            )  # fmt: skip
            process.start()
            self._commands.append(commands)
            self._processes.append(process)
        for _ in range(processes):
            self._answer(START_TIMEOUT_S)

    def _answer(self, timeout_s: float) -> tuple[int, int, float]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._results.get(timeout=1)
            except queue.Empty:
                dead = [p.pid for p in self._processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"ceiling processes {dead} exited") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("ceiling processes did not answer") from None

    def measure(self, seconds: float, chunk: int) -> dict[str, Any]:
        """Every process scores for ``seconds`` at once, in chunks of ``chunk`` texts;
        texts/s is the sum of the processes' own rates."""
        cpu_before = self._cpu_seconds()
        for commands in self._commands:
            commands.put((seconds, chunk))
        answers = [self._answer(seconds + 120) for _ in self._processes]
        texts = sum(scored for _, scored, _ in answers)
        return {
            "texts_per_s": sum(scored / took for _, scored, took in answers),
            "texts": texts,
            "chunk": chunk,
            # CPU its processes spent a text (tokenizing and the model), to set beside
            # a server's model processes (bench.serve's "where the CPU goes").
            "cpu_ms_per_text": 1000 * (self._cpu_seconds() - cpu_before) / max(1, texts),
        }

    def _cpu_seconds(self) -> float:
        """User and system CPU seconds its processes have used so far."""
        import psutil

        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in self._processes)

    def close(self) -> None:
        for commands in self._commands:
            commands.put(None)
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()

    def __enter__(self) -> Ceiling:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def main() -> None:
    import argparse
    import logging
    import os

    from bench.common import machine, tweets, write_result
    from core.logs import configure_logging
    from core.settings import Settings
    from model.classifiers import CPU_CHUNK_TEXTS
    from model.loader import model_directory, prepare
    from model.shipped import shipped_for_base
    from model.templates import TemplateRegistry

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is kept")
    args = parser.parse_args()
    configure_logging()
    settings = Settings(base_model="multilingual-e5-small")
    shipped = shipped_for_base(settings.base_model)
    assert shipped is not None, "no shipped model for multilingual-e5-small"
    onnx_file = prepare(settings)  # the file a fresh install serves
    assert onnx_file is not None, "the shipped model serves no ONNX file here"
    model_dir = model_directory(settings, shipped.version)
    template = TemplateRegistry.load(settings.resolved_templates_dir).get(
        settings.default_template_version
    )
    texts = [template.render(example.text) for example in tweets("test")[:2000]]
    processes = os.cpu_count() or 1
    rows = []
    for batch in args.batch:
        with Ceiling(onnx_file, model_dir, texts, processes=processes, batch=batch,
                     max_length=settings.max_length) as ceiling:  # fmt: skip
            ceiling.measure(1, CPU_CHUNK_TEXTS)  # warm-up
            measured = [ceiling.measure(args.seconds, CPU_CHUNK_TEXTS) for _ in range(args.rounds)]
        median = sorted(measured, key=lambda r: r["texts_per_s"])[len(measured) // 2]
        rows.append({"batch": batch, **median,
                     "texts_per_s_rounds": [r["texts_per_s"] for r in measured]})  # fmt: skip
        logging.getLogger("bench.ceiling").info("batch %d: %s", batch, rows[-1])
    write_result("ceiling-batches", {
        "machine": machine(), "processes": processes, "chunk": CPU_CHUNK_TEXTS,
        "seconds": args.seconds, "rounds": args.rounds, "by_batch": rows,
    })  # fmt: skip
    largest = max(rows, key=lambda r: r["batch"])
    print(f"| texts a call | texts/s ({processes} processes) | CPU a text | "
          f"against {largest['batch']} a call |")  # fmt: skip
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['batch']} | {row['texts_per_s']:.0f} | {row['cpu_ms_per_text']:.2f} ms | "
              f"{row['cpu_ms_per_text'] / largest['cpu_ms_per_text']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
