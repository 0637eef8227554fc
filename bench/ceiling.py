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
        for commands in self._commands:
            commands.put((seconds, chunk))
        answers = [self._answer(seconds + 120) for _ in self._processes]
        return {
            "texts_per_s": sum(scored / took for _, scored, took in answers),
            "texts": sum(scored for _, scored, _ in answers),
            "chunk": chunk,
        }

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
