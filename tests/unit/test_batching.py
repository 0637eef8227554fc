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
    # They were scored together, failed together, then each again on its own.
    assert scorer.calls == [["first"], ["ok1", "boom", "ok2"], ["ok1"], ["boom"], ["ok2"]]
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


class CountingSlot:
    """A slot that records how many batches it holds at once, and whose batches wait
    for ``gate`` (a model process's batches queue in its socket the same way)."""

    def __init__(self) -> None:
        self.holding = 0
        self.most = 0
        self.gate = asyncio.Event()
        self.batches: list[list[str]] = []

    async def score(self, batch: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        self.holding += 1
        self.most = max(self.most, self.holding)
        self.batches.append([item.text for item in batch])
        try:
            await self.gate.wait()
            return [ScoreResult(scores={}, model_version=item.text) for item in batch]
        finally:
            self.holding -= 1

    async def ready(self) -> None:
        return None

    def close(self) -> None:
        pass


async def _batches_at_least(slots: Sequence[CountingSlot], count: int) -> None:
    while sum(len(slot.batches) for slot in slots) < count:
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("depth", [1, 2])
def test_a_slot_holds_up_to_depth_batches_and_a_burst_is_shared_between_slots(
    depth: int,
) -> None:
    """With depth 2 each slot takes a second batch while its first runs (a model
    process starts it without waiting for the worker); the first batches of a burst
    still go to different slots, split as with one place per slot."""
    slots = [CountingSlot(), CountingSlot()]
    batcher = MicroBatcher(slots, max_batch_texts=2, max_queued_texts=100, depth=depth)

    async def scenario() -> list[list[ScoreResult]]:
        requests = [asyncio.ensure_future(batcher.classify(items(t))) for t in "abcdefgh"]
        await _batches_at_least(slots, 2 * depth)
        await asyncio.sleep(0.02)  # nothing more is dispatched while the slots are full
        for slot in slots:
            slot.gate.set()
        return list(await asyncio.gather(*requests))

    results = asyncio.run(scenario())
    assert [r[0].model_version for r in results] == list("abcdefgh")
    assert [slot.most for slot in slots] == [depth, depth]
    assert slots[0].batches[0] == ["a", "b"] and slots[1].batches[0] == ["c", "d"]
    batcher.close()


def test_a_slot_that_dies_holding_two_batches_has_both_tried_again_elsewhere() -> None:
    dying, healthy = DyingSlot(deaths=2), DyingSlot(deaths=0)
    healthy_gate = asyncio.Event()
    real_score = healthy.score

    async def held_score(batch: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        await healthy_gate.wait()  # busy until both of the dying slot's batches failed
        return await real_score(batch, alone=alone)

    healthy.score = held_score  # type: ignore[method-assign]
    batcher = MicroBatcher([dying, healthy], max_batch_texts=1, max_queued_texts=100, depth=2)

    async def scenario() -> list[list[ScoreResult]]:
        requests = [asyncio.ensure_future(batcher.classify(items(t))) for t in "abcd"]
        while dying.deaths:
            await asyncio.sleep(0.001)
        healthy_gate.set()
        return list(await asyncio.wait_for(asyncio.gather(*requests), 5))

    results = asyncio.run(scenario())
    assert [r[0].model_version for r in results] == ["ok"] * 4
    assert sorted(text for batch in healthy.scored for text in batch) == list("abcd")
    assert dying.readied == 2  # each of its places waited for it to be ready again
    batcher.close()


def test_with_two_places_a_burst_is_split_between_slots_as_with_one() -> None:
    slots = [CountingSlot(), CountingSlot()]
    batcher = MicroBatcher(slots, max_batch_texts=8, max_queued_texts=100, depth=2)

    async def scenario() -> None:
        requests = [asyncio.ensure_future(batcher.classify(items(t))) for t in "abcdefgh"]
        await _batches_at_least(slots, 2)
        for slot in slots:
            slot.gate.set()
        await asyncio.gather(*requests)

    asyncio.run(scenario())
    assert [slot.batches for slot in slots] == [[list("abcd")], [list("efgh")]]
    batcher.close()


def test_a_request_goes_to_an_idle_slot_not_behind_a_busy_one() -> None:
    """At low load a second place must not queue a request behind a running batch
    while another slot idles, whichever place was freed last."""
    busy, other = CountingSlot(), CountingSlot()
    other.gate.set()
    batcher = MicroBatcher([busy, other], max_batch_texts=8, max_queued_texts=100, depth=2)

    async def scenario() -> None:
        first = asyncio.ensure_future(batcher.classify(items("first")))
        await _batches_at_least([busy], 1)  # "first" holds the first slot
        await asyncio.wait_for(batcher.classify(items("second")), 5)  # the other slot
        # Behind "first" it would wait for ever: the first slot's gate is still shut.
        await asyncio.wait_for(batcher.classify(items("third")), 5)
        busy.gate.set()
        await first

    asyncio.run(scenario())
    assert busy.batches == [["first"]] and busy.most == 1
    assert other.batches == [["second"], ["third"]]
    batcher.close()


class RestartingSlot:
    """A model slot whose process dies on its first batch and, until ``ready`` returns,
    fails every batch at once (as a restarting ModelProcess does)."""

    def __init__(self) -> None:
        self.down = False
        self.died = False
        self.given: list[list[str]] = []

    async def score(self, batch: Sequence[ScoreItem], *, alone: bool = False) -> list[ScoreResult]:
        self.given.append([item.text for item in batch])
        if not self.died:
            self.died = self.down = True
        if self.down:
            raise ModelUnavailable("model process restarting")
        return [ScoreResult(scores={}, model_version="restarted") for _ in batch]

    async def ready(self) -> None:
        await asyncio.sleep(0.2)
        self.down = False

    def close(self) -> None:
        pass


def test_a_restarting_slot_gets_no_batch_on_its_other_place_until_ready() -> None:
    """Its second place must not take the retry of the batch it dropped (a restarting
    process fails it at once, on its last try): the retry waits for the healthy slot."""
    restarting, healthy = RestartingSlot(), CountingSlot()
    batcher = MicroBatcher([restarting, healthy], max_batch_texts=1, max_queued_texts=100, depth=2)

    async def scenario() -> list[list[ScoreResult]]:
        burst = [asyncio.ensure_future(batcher.classify(items(t))) for t in "ab"]
        await _batches_at_least([healthy], 1)  # "b" holds the healthy slot; "a" died
        while not restarting.given:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        healthy.gate.set()
        return list(await asyncio.wait_for(asyncio.gather(*burst), 5))

    results = asyncio.run(scenario())
    assert [r[0].model_version for r in results] == ["a", "b"]
    assert restarting.given == [["a"]]
    assert sorted(healthy.batches) == [["a"], ["b"]]
    batcher.close()


def _two_slots(
    first: RecordingScorer, second: RecordingScorer, split_texts: int = 4
) -> MicroBatcher:
    return MicroBatcher(
        [ThreadSlot(first), ThreadSlot(second)],
        max_batch_texts=64,
        max_queued_texts=100,
        split_texts=split_texts,
    )


def test_a_large_request_alone_is_cut_between_idle_slots_and_answered_whole() -> None:
    """A CRM sending one batch at a time: each idle slot scores a part on its own
    core (not one call alone on spinning threads), the answer comes back in order."""
    first, second = RecordingScorer(), RecordingScorer()
    batcher = _two_slots(first, second)
    texts = [f"t{i}" for i in range(5)]
    results = asyncio.run(batcher.classify(items(*texts)))
    assert [r.model_version for r in results] == texts
    assert sorted(first.calls + second.calls) == [["t0", "t1", "t2"], ["t3", "t4"]]
    assert len(first.calls) == len(second.calls) == 1  # one part each
    assert first.alone + second.alone == [False, False]
    batcher.close()


def test_a_request_is_not_cut_below_the_size_with_others_waiting_or_one_slot_idle() -> None:
    first, second = RecordingScorer(), RecordingScorer()
    batcher = _two_slots(first, second)

    async def scenario() -> None:
        await batcher.classify(items("a", "b", "c"))  # below 4 texts: whole, alone
        # Two requests waiting together are shared out whole, as before.
        await asyncio.gather(batcher.classify(items(*"defg")), batcher.classify(items(*"hijk")))
        # One slot busy: the other takes the large request whole.
        for scorer in (first, second):
            scorer.started.clear()
            scorer.gate.clear()
        busy = asyncio.ensure_future(batcher.classify(items("busy")))
        while not (first.started.is_set() or second.started.is_set()):
            await asyncio.sleep(0.001)
        holder, idle = (first, second) if first.started.is_set() else (second, first)
        idle.gate.set()
        await batcher.classify(items(*"lmnop"))
        assert idle.calls[-1] == list("lmnop") and ["busy"] not in holder.calls  # still held
        holder.gate.set()
        await busy

    asyncio.run(scenario())
    calls = sorted(first.calls + second.calls)
    assert calls == [["a", "b", "c"], ["busy"], list("defg"), list("hijk"), list("lmnop")]
    batcher.close()


def test_a_failing_part_fails_the_whole_request_with_its_error() -> None:
    first, second = RecordingScorer(), RecordingScorer()
    batcher = _two_slots(first, second)

    async def scenario() -> None:
        await batcher.classify(items("a", "b", "boom", "d"))

    with pytest.raises(RuntimeError, match="cannot score boom"):
        asyncio.run(scenario())
    assert len(first.calls) == len(second.calls) == 1  # it was cut in two
    still = asyncio.run(batcher.classify(items("fine")))  # still serving
    assert [result.model_version for result in still] == ["fine"]
    batcher.close()


def test_a_part_whose_model_process_dies_is_tried_again_and_the_whole_answered() -> None:
    dying, healthy = DyingSlot(deaths=1), DyingSlot(deaths=0)
    batcher = MicroBatcher(
        [dying, healthy], max_batch_texts=64, max_queued_texts=100, split_texts=4
    )
    results = asyncio.run(batcher.classify(items(*"abcdef")))
    assert [r.model_version for r in results] == ["ok"] * 6
    assert sorted(text for batch in dying.scored + healthy.scored for text in batch) == list(
        "abcdef"
    )  # every text scored once, the dead part's again elsewhere
    batcher.close()


def test_a_request_is_cut_into_parts_of_half_the_size_at_least() -> None:
    """Four idle slots, cutting from 4 texts: 5 texts make two parts, not four calls
    of one or two texts; 8 texts make four parts of two."""
    scorers = [RecordingScorer() for _ in range(4)]
    batcher = MicroBatcher(
        [ThreadSlot(scorer) for scorer in scorers],
        max_batch_texts=64,
        max_queued_texts=100,
        split_texts=4,
    )

    async def scenario() -> None:
        await batcher.classify(items(*"abcde"))
        await batcher.classify(items(*"fghijklm"))

    asyncio.run(scenario())
    calls = sorted(call for scorer in scorers for call in scorer.calls)
    assert calls == [list("abc"), list("de"), list("fg"), list("hi"), list("jk"), list("lm")]
    batcher.close()
