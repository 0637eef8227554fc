"""Adaptive batching inside an API worker: concurrent requests share model calls.

Requests queue their items; an inference thread scores everything that is
waiting as one batch (up to ``max_batch_texts``; a larger request forms a
batch of its own), then takes what arrived meanwhile. A lone request is scored
at once; under load, batches grow with the load. ``concurrent_batches`` model
calls may run at once (each in its own thread). Running in the worker that
parsed the request saves the hop to a separate model process (serialization,
a second HTTP server and its dispatcher), which cost more than the model
itself for single short texts.

When more than ``max_queued_texts`` texts wait, new requests are refused
(``Overloaded``, answered 503 with Retry-After) instead of queueing without
bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from service.scoring import ScoreItem, ScoreResult

logger = logging.getLogger(__name__)

Score = Callable[[Sequence[ScoreItem]], list[ScoreResult]]


class Overloaded(Exception):
    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"the model queue holds {queued} texts (limit {limit}); retry shortly")


class BatchObserver(Protocol):
    def batch_scored(self, texts: int, requests: int, seconds: float) -> None: ...


@dataclass
class _Waiting:
    items: Sequence[ScoreItem]
    future: asyncio.Future[list[ScoreResult]]


class MicroBatcher:
    """Queues items from coroutines of one event loop and scores them in batches."""

    def __init__(
        self,
        score: Score,
        *,
        max_batch_texts: int,
        max_queued_texts: int,
        concurrent_batches: int = 1,
        observer: BatchObserver | None = None,
    ) -> None:
        self._score = score
        self._concurrent_batches = concurrent_batches
        self._in_flight: set[asyncio.Task[None]] = set()
        self._max_batch_texts = max_batch_texts
        self._max_queued_texts = max_queued_texts
        self._observer = observer
        self._waiting: deque[_Waiting] = deque()
        self._queued_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=concurrent_batches, thread_name_prefix="inference"
        )

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    async def classify(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        if not items:
            return []
        if self._queued_texts and self._queued_texts + len(items) > self._max_queued_texts:
            raise Overloaded(self._queued_texts, self._max_queued_texts)
        loop = asyncio.get_running_loop()
        wakeup = self._start(loop)
        future: asyncio.Future[list[ScoreResult]] = loop.create_future()
        self._waiting.append(_Waiting(items, future))
        self._queued_texts += len(items)
        wakeup.set()
        return await future

    def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._wakeup is None or self._runner is None or self._runner.done():
            self._wakeup = asyncio.Event()
            self._runner = loop.create_task(self._run(self._wakeup), name="micro-batcher")
        return self._wakeup

    def _take(self) -> list[_Waiting]:
        """The oldest waiting requests that fit in one batch (at least one)."""
        batch = [self._waiting.popleft()]
        texts = len(batch[0].items)
        while self._waiting and texts + len(self._waiting[0].items) <= self._max_batch_texts:
            batch.append(self._waiting.popleft())
            texts += len(batch[-1].items)
        self._queued_texts -= texts
        return [waiting for waiting in batch if not waiting.future.done()]  # drop cancelled

    async def _run(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        free_slots = asyncio.Semaphore(self._concurrent_batches)

        def finished(task: asyncio.Task[None]) -> None:
            self._in_flight.discard(task)
            free_slots.release()

        while True:
            if not self._waiting:
                wakeup.clear()
                await wakeup.wait()
                continue
            await free_slots.acquire()  # a model call slot; meanwhile requests gather
            batch = self._take()
            if not batch:
                free_slots.release()
                continue
            task = loop.create_task(self._score_batch(loop, batch))
            self._in_flight.add(task)
            task.add_done_callback(finished)

    async def _score_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        items = [item for waiting in batch for item in waiting.items]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._score, items)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # One request's failure (say, a model that cannot load) must not fail the
            # others it was batched with: score each on its own.
            logger.warning("batch of %d requests failed (%s); scoring them one by one",
                           len(batch), exc)  # fmt: skip
            for waiting in batch:
                await self._score_batch(loop, [waiting])
            return
        if self._observer is not None:
            self._observer.batch_scored(len(items), len(batch), time.perf_counter() - started)
        offset = 0
        for waiting in batch:
            count = len(waiting.items)
            _settle(waiting, results[offset : offset + count])
            offset += count


def _settle(waiting: _Waiting, outcome: list[ScoreResult] | Exception) -> None:
    if waiting.future.done():  # the client went away
        return
    if isinstance(outcome, Exception):
        waiting.future.set_exception(outcome)
    else:
        waiting.future.set_result(outcome)
