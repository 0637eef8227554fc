"""The adaptive batcher with a plain scoring function (the model is tested elsewhere)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from service.inference.batching import MicroBatcher, Overloaded, ThreadSlot
from service.inference.scoring import ModelUnavailable, ScoreItem, ScoreResult


class RecordingScorer:
    """Scores a text by its length; records every call; can be held to let requests pile up."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.alone: list[bool] = []  # of each call
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, items: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        self.started.set()
        self.gate.wait(10)
        texts = [item.text for item in items]
        self.calls.append(texts)
        self.alone.append(alone)
        if any(text == "boom" for text in texts):
            raise RuntimeError("cannot score boom")
        return [ScoreResult(scores={"len": float(len(t))}, model_version=t) for t in texts]


def items(*texts: str) -> list[ScoreItem]:
    return [ScoreItem(text=text, template_version="v1") for text in texts]


async def _until(condition: threading.Event) -> None:
    while not condition.is_set():
        await asyncio.sleep(0.001)


def test_lone_request_is_scored_at_once_and_gets_its_own_results() -> None:
    scorer = RecordingScorer()
    batcher = MicroBatcher([ThreadSlot(scorer)], max_batch_texts=8, max_queued_texts=100)

    async def scenario() -> list[ScoreResult]:
        return await batcher.classify(items("a", "bb"))

    results = asyncio.run(scenario())
    assert [r.model_version for r in results] == ["a", "bb"]
    assert scorer.calls == [["a", "bb"]]
    batcher.close()


def test_requests_arriving_during_a_model_call_share_the_next_one() -> None:
    scorer = RecordingScorer()
    batcher = MicroBatcher([ThreadSlot(scorer)], max_batch_texts=8, max_queued_texts=100)

    async def scenario() -> list[list[ScoreResult]]:
        scorer.gate.clear()
        first = asyncio.ensure_future(batcher.classify(items("first")))
        await _until(scorer.started)  # the model is busy with "first"
        rest = [asyncio.ensure_future(batcher.classify(items(f"r{i}", f"s{i}"))) for i in range(5)]
        await asyncio.sleep(0.01)
        scorer.gate.set()
        return [await first, *[await r for r in rest]]

    results = asyncio.run(scenario())
    assert [[r.model_version for r in result] for result in results] == [
        ["first"], *[[f"r{i}", f"s{i}"] for i in range(5)]
    ]  # fmt: skip
    # 10 waiting texts, at most 8 per call: whole requests, oldest first.
    assert scorer.calls == [
        ["first"], ["r0", "s0", "r1", "s1", "r2", "s2", "r3", "s3"], ["r4", "s4"]
    ]  # fmt: skip
    batcher.close()


def test_a_request_larger_than_a_batch_is_scored_whole() -> None:
    scorer = RecordingScorer()
    batcher = MicroBatcher([ThreadSlot(scorer)], max_batch_texts=2, max_queued_texts=100)
    texts = [f"t{i}" for i in range(5)]
    results = asyncio.run(batcher.classify(items(*texts)))
    assert [r.model_version for r in results] == texts
    assert scorer.calls == [texts]
    batcher.close()


def test_a_failing_request_does_not_fail_the_requests_batched_with_it() -> None:
    scorer = RecordingScorer()
    batcher = MicroBatcher([ThreadSlot(scorer)], max_batch_texts=8, max_queued_texts=100)

    async def scenario() -> list[list[ScoreResult] | BaseException]:
        scorer.gate.clear()
        first = asyncio.ensure_future(batcher.classify(items("first")))
        await _until(scorer.started)
        waiting = [batcher.classify(items(text)) for text in ("ok1", "boom", "ok2")]
        pending = asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.sleep(0.01)
        scorer.gate.set()
        await first
        return list(await pending)

    ok1, boom, ok2 = asyncio.run(scenario())
    assert isinstance(boom, RuntimeError)
    assert [r.model_version for r in ok1] == ["ok1"]  # type: ignore[union-attr]
    assert [r.model_version for r in ok2] == ["ok2"]  # type: ignore[union-attr]
    batcher.close()


def test_a_full_queue_refuses_new_requests_and_recovers() -> None:
    scorer = RecordingScorer()
    batcher = MicroBatcher([ThreadSlot(scorer)], max_batch_texts=4, max_queued_texts=3)

    async def scenario() -> list[ScoreResult]:
        scorer.gate.clear()
        first = asyncio.ensure_future(batcher.classify(items("first")))
        await _until(scorer.started)
        queued = asyncio.ensure_future(batcher.classify(items("a", "b", "c")))
        await asyncio.sleep(0)
        assert batcher.queued_texts == 3
        with pytest.raises(Overloaded, match="limit 3"):
            await batcher.classify(items("d"))
        scorer.gate.set()
        await first
        await queued
        return await batcher.classify(items("later"))

    assert [r.model_version for r in asyncio.run(scenario())] == ["later"]
    assert batcher.queued_texts == 0
    batcher.close()


def test_a_cancelled_request_is_not_scored_and_does_not_disturb_others() -> None:
    scorer = RecordingScorer()
    batcher = MicroBatcher([ThreadSlot(scorer)], max_batch_texts=8, max_queued_texts=100)

    async def scenario() -> list[ScoreResult]:
        scorer.gate.clear()
        first = asyncio.ensure_future(batcher.classify(items("first")))
        await _until(scorer.started)
        gone = asyncio.ensure_future(batcher.classify(items("gone")))
        kept = asyncio.ensure_future(batcher.classify(items("kept")))
        await asyncio.sleep(0)
        gone.cancel()
        scorer.gate.set()
        await first
        return await kept

    assert [r.model_version for r in asyncio.run(scenario())] == ["kept"]
    assert scorer.calls == [["first"], ["kept"]]
    batcher.close()


def test_concurrent_batches_run_side_by_side() -> None:
    both_running = threading.Event()
    scorer = RecordingScorer()

    def score(items: Sequence[ScoreItem], *, alone: bool) -> list[ScoreResult]:
        if items[0].text == "a":  # "a" can only finish while "b" runs beside it
            assert both_running.wait(5), "the second model call never started"
        else:
            both_running.set()
        return scorer(items, alone=alone)

    slots = [ThreadSlot(score), ThreadSlot(score)]
    batcher = MicroBatcher(slots, max_batch_texts=1, max_queued_texts=100)

    async def scenario() -> list[list[ScoreResult]]:
        return list(
            await asyncio.gather(batcher.classify(items("a")), batcher.classify(items("b")))
        )

    results = asyncio.run(scenario())
    assert [[r.model_version for r in result] for result in results] == [["a"], ["b"]]
    assert sorted(map(tuple, scorer.calls)) == [("a",), ("b",)]
    batcher.close()


def test_requests_waiting_together_are_shared_out_between_free_slots() -> None:
    """Four requests queued at once with two free slots: two model calls of two, not one
    call of four beside an idle slot (which would keep them in lockstep)."""
    scorer = RecordingScorer()
    batcher = MicroBatcher(
        [ThreadSlot(scorer), ThreadSlot(scorer)], max_batch_texts=8, max_queued_texts=100
    )

    async def scenario() -> list[list[ScoreResult]]:
        return list(await asyncio.gather(*(batcher.classify(items(t)) for t in "abcd")))

    results = asyncio.run(scenario())
    assert [[r.model_version for r in result] for result in results] == [["a"], ["b"], ["c"], ["d"]]
    assert sorted(map(tuple, scorer.calls)) == [("a", "b"), ("c", "d")]
    batcher.close()


def test_a_lone_request_runs_alone_and_one_beside_another_does_not() -> None:
    """Latency when idle, throughput when busy: a batch with nothing else in flight or
    waiting may use every core; batches that overlap run one core each, and after an
    overlap the next lone batch runs one core too (under load the queue drains for a
    moment: a call alone would then share its cores with the next arrival)."""
    first, second = RecordingScorer(), RecordingScorer()
    first.gate.clear()
    batcher = MicroBatcher(
        [ThreadSlot(first), ThreadSlot(second)], max_batch_texts=8, max_queued_texts=100
    )

    async def scenario() -> None:
        lone = asyncio.ensure_future(batcher.classify(items("lone")))
        await _until(first.started)
        await batcher.classify(items("beside"))  # while "lone" is still in its call
        first.gate.set()
        await lone
        for text in ("after an overlap", "one at a time", "again"):
            await batcher.classify(items(text))

    asyncio.run(scenario())
    calls = dict(zip(
        [c[0] for c in first.calls + second.calls], first.alone + second.alone, strict=True
    ))  # fmt: skip
    assert calls == {"lone": True, "beside": False, "after an overlap": False,
                     "one at a time": True, "again": True}  # fmt: skip
    batcher.close()


def test_a_burst_shared_out_between_slots_does_not_run_alone() -> None:
    scorer = RecordingScorer()
    batcher = MicroBatcher(
        [ThreadSlot(scorer), ThreadSlot(scorer)], max_batch_texts=8, max_queued_texts=100
    )

    async def scenario() -> None:
        await asyncio.gather(*(batcher.classify(items(t)) for t in "abcd"))

    asyncio.run(scenario())
    assert sorted(map(tuple, scorer.calls)) == [("a", "b"), ("c", "d")]
    assert scorer.alone == [False, False]
    batcher.close()


class DyingSlot:
    """A model slot whose process 'dies' on its first ``deaths`` batches, then comes
    back after ``ready`` (as a restarted model process does)."""

    def __init__(self, deaths: int) -> None:
        self.deaths = deaths
        self.scored: list[list[str]] = []
        self.alone: list[bool] = []  # of each batch it was given
        self.readied = 0

    async def score(self, batch: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        self.alone.append(alone)
        if self.deaths:
            self.deaths -= 1
            raise ModelUnavailable("model process died")
        self.scored.append([item.text for item in batch])
        return [ScoreResult(scores={}, model_version="ok") for _ in batch]

    async def ready(self) -> None:
        self.readied += 1
        await asyncio.sleep(0.05)

    def close(self) -> None:
        pass


def test_a_batch_whose_model_process_dies_is_tried_again_on_another_slot() -> None:
    dying, healthy = DyingSlot(deaths=1), DyingSlot(deaths=0)
    batcher = MicroBatcher([dying, healthy], max_batch_texts=8, max_queued_texts=100)

    async def scenario() -> list[ScoreResult]:
        results = await batcher.classify(items("a", "b"))
        await batcher.classify(items("c"))  # after the failure, alone once more
        return results

    results = asyncio.run(scenario())
    assert [r.model_version for r in results] == ["ok", "ok"]
    assert healthy.scored[0] == ["a", "b"] and dying.scored in ([], [["c"]])
    assert dying.readied == 1  # the failed slot waited to be ready before taking more
    # Each try ran alone: the failed one ended before the retry started.
    assert dying.alone + healthy.alone == [True, True, True]
    batcher.close()


def test_a_request_that_fails_twice_gets_model_unavailable_not_a_hang() -> None:
    slots = [DyingSlot(deaths=5), DyingSlot(deaths=5)]
    batcher = MicroBatcher(slots, max_batch_texts=8, max_queued_texts=100)

    async def scenario() -> None:
        await asyncio.wait_for(batcher.classify(items("a")), 5)

    with pytest.raises(ModelUnavailable):
        asyncio.run(scenario())
    assert sum(5 - slot.deaths for slot in slots) == 2  # two tries, then the answer
    batcher.close()
