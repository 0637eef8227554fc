"""Model processes: same scores as the in-worker engine, refresh, batches of any size,
and supervision (a killed or hung process is replaced; every wait has a deadline)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import storage
from core.settings import Settings
from model import model_store
from model.templates import TemplateRegistry
from service.inference.model_process import ModelProcess, ModelProcessDied
from service.inference.scoring import ScoreItem, Scorer, ScoreResult
from tests.support import ROOT

METADATA = {"base_model": "tiny", "template_versions": ["v1"], "data_sha256": "x", "metrics": {}}
TEXTS = ["fine, thanks", "this is awful", "an ordinary day", "great service " * 20]


@pytest.fixture(scope="module")
def settings(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    stored = model_store.save_model(tiny_model_dir, name="process-test", metadata=METADATA)
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, model_tag=stored.tag)
    storage.upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the module, as an API worker has one: a handle's streams
    live on the loop that first scored with it."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.run_until_complete(asyncio.sleep(0.1))  # closed streams finish closing
    event_loop.close()


@pytest.fixture(scope="module")
def process(settings: Settings, loop: asyncio.AbstractEventLoop) -> Iterator[ModelProcess]:
    handle = ModelProcess(settings, "test", start_timeout_s=300, call_timeout_s=20)
    yield handle
    handle.close()


def items() -> list[ScoreItem]:
    return [ScoreItem(text=text, template_version="v1") for text in TEXTS]


def test_a_model_process_scores_like_the_engine_in_the_worker(
    process: ModelProcess, settings: Settings, loop: asyncio.AbstractEventLoop
) -> None:
    started = process.wait_started()
    assert [m["reference"] for m in started["models"]] == ["champion"]
    engine = Scorer(settings, TemplateRegistry.load(settings.resolved_templates_dir))
    expected = engine.score(items())
    got = loop.run_until_complete(process.score(items()))
    assert [r.model_version for r in got] == [r.model_version for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.scores == pytest.approx(theirs.scores, abs=1e-6)


# What a model process runs (service.inference.model_process.serve_model_process):
# the store, the database, the scorer with every referenced model, then batches.
SERVING_PROBE = """
import json, sys
from core import database
from core.settings import Settings
from model.model_store import use_store
from model.templates import TemplateRegistry
from service.inference.loading import load_scorer
from service.inference.scoring import ScoreItem

settings = Settings()
use_store(settings.resolved_bentoml_home)
sessions = database.make_session_factory(database.make_engine(settings.resolved_database_url))
scorer = load_scorer(settings, TemplateRegistry.load(settings.resolved_templates_dir), sessions)
scores = scorer.score([ScoreItem(text="fine, thanks", template_version="v1")])
print(json.dumps({"runtimes": [m["runtime"] for m in scorer.describe()["models"]],
                  "scored": len(scores),
                  "loaded": sorted(m for m in ("alembic", "torch", "transformers",
                                               "bentoml._internal.store")
                                   if m in sys.modules)}))
"""


def test_a_model_process_on_onnx_runtime_loads_neither_torch_nor_transformers(
    process: ModelProcess, settings: Settings
) -> None:
    """They took ~240 MB of each model process and seconds of its start; only the
    torch backend, the zero-shot model and the ONNX export need them. Alembic (~11 MB
    with Mako and Pygments) runs migrations, which a model process never does. BentoML's
    store code (~21 MB) is not needed to read a stored model by its full tag."""
    process.wait_started()  # the export exists: made by the first process, with torch
    handle = ModelProcess(settings, "light", start_timeout_s=300, call_timeout_s=20)
    try:
        handle.wait_started()
        maps = Path(f"/proc/{handle.pid}/maps").read_text()
    finally:
        handle.close()
    assert "onnxruntime" in maps and "libtorch" not in maps
    env = {**os.environ, "SENTILOOP_HOME": str(settings.home),
           "SENTILOOP_MODEL_TAG": str(settings.model_tag)}  # fmt: skip
    probe = subprocess.run(
        [sys.executable, "-c", SERVING_PROBE],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report == {"runtimes": ["onnx-int8"], "scored": 1, "loaded": []}


def test_refresh_goes_over_the_control_pipe_and_updates_what_is_described(
    process: ModelProcess,
) -> None:
    refreshed = process.call("refresh", 60)
    assert refreshed["changes"] == []  # the pinned tag does not move
    assert process.described is not None
    assert process.described["models"] == refreshed["models"]


def test_a_batch_far_larger_than_the_socket_buffer_is_scored(
    process: ModelProcess, loop: asyncio.AbstractEventLoop
) -> None:
    """256 texts of 5,000 characters are ~2.5 MB pickled; the socket buffer holds ~200 kB.
    A non-blocking Connection.send failed half-written and took the process down."""
    long_items = [ScoreItem(text=("é" if n % 2 else "word ") * 1000, template_version="v1")
                  for n in range(256)]  # fmt: skip
    pid = process.pid
    results = loop.run_until_complete(process.score(long_items))
    assert len(results) == 256 and process.pid == pid


def test_an_error_in_the_process_reaches_the_caller(
    process: ModelProcess, loop: asyncio.AbstractEventLoop
) -> None:
    unknown = [ScoreItem(text="x", template_version="no-such-version")]
    with pytest.raises(Exception, match="no-such-version"):
        loop.run_until_complete(process.score(unknown))
    assert len(loop.run_until_complete(process.score(items()))) == len(TEXTS)  # still serving


def test_a_hung_process_fails_its_batch_and_is_started_again(
    settings: Settings, loop: asyncio.AbstractEventLoop
) -> None:
    handle = ModelProcess(settings, "crash", start_timeout_s=300, call_timeout_s=20)
    try:
        handle.wait_started()
        first_pid = handle.pid
        assert first_pid is not None

        async def scenario() -> list[object]:
            await handle.score(items())  # the event loop now watches the socket
            os.kill(first_pid, signal.SIGSTOP)  # hung: holds the next batch, never answers
            outcomes: list[object] = []
            hung_at = time.monotonic()
            try:
                outcomes.append(len(await handle.score(items())))
            except ModelProcessDied as exc:
                outcomes.append(exc)
            failed_after.append(time.monotonic() - hung_at)
            assert not handle.available  # replaced in the background; batches refused meanwhile
            with pytest.raises(ModelProcessDied, match="restarting"):
                await handle.score(items())
            await asyncio.wait_for(handle.ready(), 120)
            outcomes.append(len(await handle.score(items())))
            return outcomes

        handle._call_timeout_s = 2.0
        failed_after: list[float] = []
        outcomes = loop.run_until_complete(scenario())
        assert isinstance(outcomes[0], ModelProcessDied)
        assert outcomes[1] == len(TEXTS)
        assert handle.pid != first_pid and handle.restarts == 1
        assert not psutil.pid_exists(first_pid)  # killed and reaped, not a zombie
        # The hung batch failed at its call timeout (2 s), not later.
        assert failed_after[0] < handle._call_timeout_s + 3.0, failed_after
    finally:
        handle.close()


def test_a_process_killed_while_idle_is_replaced_without_a_batch_noticing(
    settings: Settings, loop: asyncio.AbstractEventLoop
) -> None:
    handle = ModelProcess(settings, "idle", start_timeout_s=300, call_timeout_s=20)
    try:
        handle.wait_started()
        first_pid = handle.pid
        assert first_pid is not None

        async def scenario() -> int:
            await handle.score(items())
            os.kill(first_pid, signal.SIGKILL)
            for _ in range(100):  # the end of file reaches the event loop
                if not handle.available:
                    break
                await asyncio.sleep(0.05)
            assert not handle.available
            # Control requests are refused at once, not left waiting on the dead process.
            refused_at = time.monotonic()
            with pytest.raises(ModelProcessDied):
                await asyncio.to_thread(handle.call, "refresh", 60)
            assert time.monotonic() - refused_at < 1.0
            await asyncio.wait_for(handle.ready(), 120)
            return len(await handle.score(items()))

        assert loop.run_until_complete(scenario()) == len(TEXTS)
        assert handle.pid != first_pid
        assert not psutil.pid_exists(first_pid)
    finally:
        handle.close()


def test_a_late_answer_is_never_taken_for_the_next_batch(
    process: ModelProcess, settings: Settings, loop: asyncio.AbstractEventLoop
) -> None:
    """A batch whose caller went away still gets answered; that answer must be dropped,
    not handed to the batch sent after it."""
    others = [ScoreItem(text=f"another text {n}", template_version="v1") for n in range(3)]
    engine = Scorer(settings, TemplateRegistry.load(settings.resolved_templates_dir))
    expected = engine.score(others)

    async def scenario() -> list[object]:
        await process.score(items())  # the event loop now watches the pipe
        abandoned = asyncio.ensure_future(process.score(items() * 20))
        await asyncio.sleep(0)  # sent; now its caller goes away
        abandoned.cancel()
        return list(await process.score(others))

    got = loop.run_until_complete(scenario())
    assert len(got) == len(others)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.scores == pytest.approx(theirs.scores, abs=1e-6)  # type: ignore[attr-defined]


def test_two_batches_sent_at_once_are_each_answered_with_their_own_scores(
    process: ModelProcess, settings: Settings, loop: asyncio.AbstractEventLoop
) -> None:
    """A worker sends a model process its next batch while the first runs (depth 2,
    service.inference.batching): each caller gets the scores of its own texts."""
    engine = Scorer(settings, TemplateRegistry.load(settings.resolved_templates_dir))
    second = [ScoreItem(text=f"second batch {n}", template_version="v1") for n in range(3)]

    async def scenario() -> list[list[ScoreResult]]:
        return list(await asyncio.gather(process.score(items() * 8), process.score(second)))

    first_got, second_got = loop.run_until_complete(scenario())
    for got, sent in ((first_got, items() * 8), (second_got, second)):
        expected = engine.score(sent)
        assert len(got) == len(sent)
        for mine, theirs in zip(got, expected, strict=True):
            assert mine.scores == pytest.approx(theirs.scores, abs=1e-6)


def test_a_process_killed_holding_two_batches_fails_both_and_is_replaced(
    settings: Settings, loop: asyncio.AbstractEventLoop
) -> None:
    handle = ModelProcess(settings, "two", start_timeout_s=300, call_timeout_s=20)
    try:
        handle.wait_started()
        first_pid = handle.pid
        assert first_pid is not None

        async def scenario() -> list[object]:
            await handle.score(items())  # the event loop now watches the socket
            os.kill(first_pid, signal.SIGSTOP)  # both batches below wait in its socket
            held = [asyncio.ensure_future(handle.score(items())) for _ in range(2)]
            await asyncio.sleep(0.2)
            os.kill(first_pid, signal.SIGKILL)
            outcomes = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 10)
            await asyncio.wait_for(handle.ready(), 120)
            return [*outcomes, len(await handle.score(items()))]

        outcomes = loop.run_until_complete(scenario())
        assert all(isinstance(outcome, ModelProcessDied) for outcome in outcomes[:2]), outcomes
        assert outcomes[2] == len(TEXTS)
        assert handle.pid != first_pid and handle.restarts == 1
    finally:
        handle.close()
