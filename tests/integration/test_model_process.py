"""Model processes: same scores as the in-worker engine, refresh, and restart after a crash."""

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import feedback
from sentiloop.settings import Settings
from service import model_store
from service.model_process import ModelProcess, ModelProcessDied
from service.scoring import ScoreItem, ScoringEngine
from service.templates import TemplateRegistry

METADATA = {"base_model": "tiny", "template_versions": ["v1"], "data_sha256": "x", "metrics": {}}
TEXTS = ["fine, thanks", "this is awful", "an ordinary day", "great service " * 20]


@pytest.fixture(scope="module")
def settings(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    stored = model_store.save_model(tiny_model_dir, name="process-test", metadata=METADATA)
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, model_tag=stored.tag)
    feedback.upgrade(settings.resolved_database_url)
    return settings


@pytest.fixture(scope="module")
def process(settings: Settings) -> Iterator[ModelProcess]:
    handle = ModelProcess(settings, "test", start_timeout_s=300)
    yield handle
    handle.close()


def items() -> list[ScoreItem]:
    return [ScoreItem(text=text, template_version="v1") for text in TEXTS]


def test_a_model_process_scores_like_the_engine_in_the_worker(
    process: ModelProcess, settings: Settings
) -> None:
    started = process.wait_started()
    assert [m["reference"] for m in started["models"]] == ["champion"]
    engine = ScoringEngine(settings, TemplateRegistry.load(settings.resolved_templates_dir))
    expected = engine.score(items())
    got = asyncio.run(process.score(items()))
    assert [r.model_version for r in got] == [r.model_version for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.scores == pytest.approx(theirs.scores, abs=1e-6)


def test_refresh_and_describe_go_over_the_control_pipe(process: ModelProcess) -> None:
    refreshed = process.call("refresh")
    assert refreshed["changes"] == []  # the pinned tag does not move
    assert process.call("describe")["models"] == refreshed["models"]


def test_an_error_in_the_process_reaches_the_caller(process: ModelProcess) -> None:
    with pytest.raises(Exception, match="no-such-version"):
        asyncio.run(process.score([ScoreItem(text="x", template_version="no-such-version")]))
    assert len(asyncio.run(process.score(items()))) == len(TEXTS)  # and it keeps serving


def test_a_killed_process_fails_its_batch_and_is_started_again(settings: Settings) -> None:
    handle = ModelProcess(settings, "crash", start_timeout_s=300)
    try:
        handle.wait_started()
        first_pid = handle._process.pid
        assert first_pid is not None

        async def scenario() -> list[object]:
            await handle.score(items())  # the event loop now watches the pipe
            os.kill(first_pid, signal.SIGKILL)
            outcomes: list[object] = []
            for _ in range(2):
                try:
                    outcomes.append(len(await handle.score(items())))
                except ModelProcessDied as exc:
                    outcomes.append(exc)
            return outcomes

        outcomes = asyncio.run(scenario())
        assert isinstance(outcomes[0], ModelProcessDied)
        assert outcomes[1] == len(TEXTS)
        assert handle._process.pid != first_pid
    finally:
        handle.close()


def test_a_late_answer_is_never_taken_for_the_next_batch(
    process: ModelProcess, settings: Settings
) -> None:
    """A batch whose caller went away still gets answered; that answer must be dropped,
    not handed to the batch sent after it."""
    others = [ScoreItem(text=f"another text {n}", template_version="v1") for n in range(3)]
    engine = ScoringEngine(settings, TemplateRegistry.load(settings.resolved_templates_dir))
    expected = engine.score(others)

    async def scenario() -> list[object]:
        await process.score(items())  # the event loop now watches the pipe
        abandoned = asyncio.ensure_future(process.score(items() * 20))
        await asyncio.sleep(0)  # sent; now its caller goes away
        abandoned.cancel()
        return list(await process.score(others))

    got = asyncio.run(scenario())
    assert len(got) == len(others)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.scores == pytest.approx(theirs.scores, abs=1e-6)  # type: ignore[attr-defined]
