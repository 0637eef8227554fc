"""Adaptive batching inside an API worker: concurrent requests share model calls.

Requests queue their items; whenever a model slot is free, it scores the
oldest waiting requests as one batch (up to ``max_batch_texts``, and no more
than its share when other slots are free too; a larger request forms a batch
of its own). A lone request is scored at once; under load, batches grow with
the load. One model call runs at a time per slot (a slot may hold more batches,
see below): a model process
(``service.inference.model_process``, the CPU default) or a thread of the worker
(``ThreadSlot``). Batching in the worker that parsed the request saves the hop
to a separate model server (serialization, a second HTTP server and its
dispatcher), which cost more than the model itself for single short texts.

Latency when idle, throughput when busy: a batch that runs alone (no other batch
in flight, none waiting when it leaves), right after another that did, is scored
``alone``, on every core (``Classifier.predict``); otherwise each slot's call runs
on one core, side by side with the others. The second condition keeps the cores
from being oversubscribed under load, when the queue drains for a moment and the
next request arrives during the call: one request in flight at a time runs alone
from its second request on.

A slot may hold ``depth`` batches at once. Model processes take two: while one
batch runs, the next waits in the process's socket, so the process starts it the
moment it finishes instead of idling while the worker reads the answer and forms
the next batch (the worker shares two cores with the model processes and is not
always scheduled at once). A batch goes to an idle slot when there is one, and
waiting texts are shared out between idle slots, not places: a burst is split
as with one place per slot.

A large request alone in the queue while several slots idle (``split_texts`` texts
or more; a CRM sending one batch at a time) is cut into one part per idle slot,
each scored on one core, and answered whole when every part is back. Without
this it ran as one call, alone, on a session whose threads spin across every
core, which lost most of its time whenever the API worker (parsing, logging the
previous batch) took a core from it.

When more than ``max_queued_texts`` texts wait, new requests are refused
(``Overloaded``, answered 503 with Retry-After) instead of queueing without
bound. A slot that fails with ``ModelUnavailable`` (its model process died or
hung) is taken out of service until it is ``ready`` again, and the requests of
its batch go back to the front of the queue for one more try on another slot;
a second failure answers them with ``ModelUnavailable`` (503).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from service.inference.scoring import ModelUnavailable, ScoreItem, ScoreResult

logger = logging.getLogger(__name__)


class Score(Protocol):
    def __call__(self, items: Sequence[ScoreItem], *, alone: bool) -> list[ScoreResult]: ...


class ModelSlot(Protocol):
    """Where one model call at a time runs."""

    async def score(self, items: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        """Scores of ``items``; ``alone``: no other batch is in flight."""
        ...

    async def ready(self) -> None:
        """Return once the slot can take batches again (after ``ModelUnavailable``)."""
        ...

    def close(self) -> None: ...


# Tries of a request on slots that fail with ModelUnavailable before it gets a 503.
MAX_TRIES = 2


class ThreadSlot:
    """Runs a scoring function in a thread of its own."""

    def __init__(self, score: Score, name: str = "inference") -> None:
        self._score = score
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def score(self, items: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        loop = asyncio.get_running_loop()
        call = functools.partial(self._score, items, alone=alone)
        return await loop.run_in_executor(self._executor, call)

    async def ready(self) -> None:
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Overloaded(Exception):
    def __init__(self, queued: int, limit: int) -> None:
        super().__init__(f"the model queue holds {queued} texts (limit {limit}); retry shortly")


class BatchObserver(Protocol):
    def batch_scored(self, texts: int, requests: int, seconds: float, alone: bool) -> None: ...


@dataclass
class _Waiting:
    items: Sequence[ScoreItem]
    future: asyncio.Future[list[ScoreResult]]
    tries: int = 0


class MicroBatcher:
    """Queues items from coroutines of one event loop and scores them in batches."""

    def __init__(
        self,
        slots: Sequence[ModelSlot],
        *,
        max_batch_texts: int,
        max_queued_texts: int,
        observer: BatchObserver | None = None,
        depth: int = 1,
        split_texts: int | None = None,
    ) -> None:
        """Batches run on ``slots``, up to ``depth`` at a time on each (a slot runs one
        and queues the others); the batcher closes them. A request of ``split_texts``
        texts or more alone in the queue is cut between the idle slots, in parts of half
        that at least (None: never)."""
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        if split_texts is not None and split_texts < 2:
            raise ValueError(f"split_texts must be at least 2, not {split_texts}")
        self._slots = list(slots)
        self._depth = depth
        self._split_texts = split_texts
        self._in_flight: set[asyncio.Task[None]] = set()
        self._max_batch_texts = max_batch_texts
        self._max_queued_texts = max_queued_texts
        self._observer = observer
        self._waiting: deque[_Waiting] = deque()
        self._queued_texts = 0
        self._running = 0  # batches in flight
        self._previous_lone = True  # whether the last batch left with nothing else in flight
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None

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
        for slot in self._slots:
            slot.close()

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._wakeup is None or self._runner is None or self._runner.done():
            self._wakeup = asyncio.Event()
            self._runner = loop.create_task(self._run(self._wakeup), name="micro-batcher")
        return self._wakeup

    def _take(self, free_slots: int) -> list[_Waiting]:
        """The oldest waiting requests that fit in one batch (at least one request).

        With other slots free too, the waiting texts are shared out between them
        rather than all going into this batch: requests that arrive together
        would otherwise stay together, one slot busy and the others idle.
        """
        share = -(-self._queued_texts // free_slots)  # ceiling division
        limit = min(self._max_batch_texts, share)
        batch = [self._waiting.popleft()]
        texts = len(batch[0].items)
        while self._waiting and texts + len(self._waiting[0].items) <= limit:
            batch.append(self._waiting.popleft())
            texts += len(batch[-1].items)
        self._queued_texts -= texts
        return [waiting for waiting in batch if not waiting.future.done()]  # drop cancelled

    async def _run(self, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        places = [self._depth] * len(self._slots)  # free places of each slot
        holding = [0] * len(self._slots)  # batches each slot holds
        # Slots that failed with ModelUnavailable, until ready: none of their places
        # is used (a restarting model process fails a batch at once, and the retry
        # of the batch it dropped would spend its last try there).
        down = [False] * len(self._slots)
        place_freed = asyncio.Event()

        def give_back(index: int) -> None:
            places[index] += 1
            place_freed.set()

        async def back_when_ready(index: int) -> None:
            await self._slots[index].ready()
            down[index] = False
            give_back(index)

        def mark_down(index: int) -> None:
            down[index] = True

        def finished(index: int, task: asyncio.Task[None]) -> None:
            self._in_flight.discard(task)
            holding[index] -= 1
            if not task.cancelled() and isinstance(task.exception(), ModelUnavailable):
                waiting = loop.create_task(back_when_ready(index))
                self._in_flight.add(waiting)
                waiting.add_done_callback(self._in_flight.discard)
            else:
                give_back(index)

        while True:
            if not self._waiting:
                wakeup.clear()
                await wakeup.wait()
                continue
            free = [i for i, count in enumerate(places) if count and not down[i]]
            if not free:  # every place taken; meanwhile requests gather
                place_freed.clear()
                await place_freed.wait()
                continue
            # An idle slot first: a batch queued behind another while a slot idles
            # waits for nothing. The waiting texts are shared out between the idle
            # slots (a burst is split, not given whole to one), and all go to a busy
            # slot's second place when none is idle.
            index = min(free, key=lambda i: (holding[i], i))
            idle = sum(1 for i in free if not holding[i])
            if self._splits(idle):
                self._split(loop, parts=min(idle, self._most_parts()))
            batch = self._take(free_slots=max(idle, 1))
            if not batch:
                continue
            places[index] -= 1
            holding[index] += 1
            lone = self._running == 0 and not self._waiting
            alone, self._previous_lone = lone and self._previous_lone, lone
            self._running += 1
            task = loop.create_task(self._run_batch(
                self._slots[index], batch, alone, functools.partial(mark_down, index)
            ))  # fmt: skip
            self._in_flight.add(task)
            task.add_done_callback(functools.partial(finished, index))

    def _splits(self, idle: int) -> bool:
        """Whether the waiting request is to be cut between the ``idle`` slots: it waits
        alone, it is large, and more than one slot is idle."""
        return (
            self._split_texts is not None
            and idle > 1
            and len(self._waiting) == 1
            and len(self._waiting[0].items) >= self._split_texts
        )

    def _most_parts(self) -> int:
        """Parts the waiting request may be cut into: each of half ``split_texts`` texts
        at least (one text a call on each of many cores would cost more than it saves)."""
        assert self._split_texts is not None
        return len(self._waiting[0].items) // (self._split_texts // 2)

    def _split(self, loop: asyncio.AbstractEventLoop, parts: int) -> None:
        """Replace the one waiting request by ``parts`` requests of its texts in order
        (sizes within one of each other), first in line; the whole is answered when
        every part is, or fails with the first part that fails. A part keeps the whole's
        tries."""
        whole = self._waiting.popleft()
        size, extra = divmod(len(whole.items), parts)
        pieces: list[_Waiting] = []
        start = 0
        for part in range(parts):
            end = start + size + (1 if part < extra else 0)
            pieces.append(_Waiting(whole.items[start:end], loop.create_future(), whole.tries))
            start = end
        self._waiting.extendleft(reversed(pieces))  # the same texts: the count holds
        joining = loop.create_task(_join(whole, pieces), name="micro-batcher-join")
        self._in_flight.add(joining)
        joining.add_done_callback(self._in_flight.discard)

    async def _run_batch(
        self,
        slot: ModelSlot,
        batch: list[_Waiting],
        alone: bool,
        on_unavailable: Callable[[], None],
    ) -> None:
        """Score the batch; it counts as in flight (from its dispatch) until it is settled
        or queued again, so that the retry of a batch that failed alone is alone too.
        ``on_unavailable`` runs when the slot fails with ModelUnavailable, before the
        batcher can hand the retry out."""
        try:
            await self._score_batch(slot, batch, alone)
        except ModelUnavailable:
            on_unavailable()
            raise
        finally:
            self._running -= 1

    async def _score_batch(self, slot: ModelSlot, batch: list[_Waiting], alone: bool) -> None:
        items = [item for waiting in batch for item in waiting.items]
        started = time.perf_counter()
        try:
            results = await slot.score(items, alone=alone)
        except ModelUnavailable as exc:
            self._retry(batch, exc)
            raise  # the slot stays out of service until it is ready again
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # One request's failure (say, a model that cannot load) must not fail the
            # others it was batched with: score each on its own.
            logger.warning("batch of %d requests failed (%s); scoring them one by one",
                           len(batch), exc)  # fmt: skip
            for index, waiting in enumerate(batch):
                try:
                    await self._score_batch(slot, [waiting], alone=False)
                except ModelUnavailable as unavailable:
                    self._retry(batch[index + 1 :], unavailable)
                    raise
            return
        if self._observer is not None:
            seconds = time.perf_counter() - started
            self._observer.batch_scored(len(items), len(batch), seconds, alone)
        offset = 0
        for waiting in batch:
            count = len(waiting.items)
            _settle(waiting, results[offset : offset + count])
            offset += count

    def _retry(self, batch: list[_Waiting], error: ModelUnavailable) -> None:
        """Queue the batch's requests again, first in line, unless they had their tries."""
        again = []
        for waiting in batch:
            waiting.tries += 1
            if waiting.tries >= MAX_TRIES:
                _settle(waiting, error)
            elif not waiting.future.done():
                again.append(waiting)
        for waiting in reversed(again):
            self._waiting.appendleft(waiting)
            self._queued_texts += len(waiting.items)
        if again and self._wakeup is not None:
            self._wakeup.set()


async def _join(whole: _Waiting, pieces: Sequence[_Waiting]) -> None:
    """Answer ``whole`` with its pieces' results in order, or the first failure."""
    try:
        done = await asyncio.gather(*(piece.future for piece in pieces))
    except Exception as exc:
        for piece in pieces:
            piece.future.cancel()  # a part still waiting (a retry) is not scored
        _settle(whole, exc)
        return
    _settle(whole, [result for part in done for result in part])


def _settle(waiting: _Waiting, outcome: list[ScoreResult] | Exception) -> None:
    if waiting.future.done():  # the client went away
        return
    if isinstance(outcome, Exception):
        waiting.future.set_exception(outcome)
    else:
        waiting.future.set_result(outcome)
