"""A new user's path through `sentiloop train`: a CRM's headerless star-rating export
to a promoted model, every mistake on the way answered in a line or two (the
messages are asserted, not just the exit codes), none recorded as a training run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import storage
from sentiloop.cli import EXIT_BUSY, app
from storage import runs
from tests.integration.test_training import PATTERNS, THINGS
from tests.support import wait_until

STARS = {"positive": ("5", "4"), "negative": ("1", "2"), "neutral": ("3",)}


def write_export(path: Path) -> Path:
    """id, review text, stars: no header row, as a CRM exports it; one empty review."""
    rows: list[list[object]] = []
    for label, patterns in PATTERNS.items():
        for n, pattern in enumerate(patterns):
            for thing in THINGS:
                rows.append(
                    [len(rows) + 1, pattern.format(thing), STARS[label][n % len(STARS[label])]]
                )
    rows.append([len(rows) + 1, "", "5"])
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture
def runner(
    tmp_path: Path, tiny_model_dir: Path, bentoml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> CliRunner:
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SENTILOOP_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("SENTILOOP_MODEL_NAME", f"cli-train-{uuid.uuid4().hex[:8]}")
    return CliRunner()


def error_of(result: Result) -> str:
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, output
    return lines[0]


FAST = ["--epochs", "1", "--max-length", "32", "--no-progress"]


def test_from_a_headerless_star_export_to_a_promoted_model(
    runner: CliRunner, tmp_path: Path
) -> None:
    export = write_export(tmp_path / "reviews.csv")
    missing = error_of(runner.invoke(app, ["train", "--base-data", str(tmp_path / "nope.csv")]))
    assert missing == f"error: {tmp_path / 'nope.csv'}: no such file"
    headerless = error_of(runner.invoke(app, ["train", "--base-data", str(export)]))
    assert "no text column" in headerless
    assert "--no-header --text-field 2 --label-field 3" in headerless
    columns = ["--no-header", "--text-field", "2", "--label-field", "3"]
    stars = error_of(runner.invoke(app, ["train", "--base-data", str(export), *columns]))
    assert "have labels that are not negative, neutral or positive" in stars
    assert "--label-map stars5" in stars
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("1,great,5\n2,awful,1\n3,fine,3\n")
    small = error_of(
        runner.invoke(app, ["train", "--base-data", str(tiny), *columns, "--label-map", "stars5"])
    )
    assert "too little data to train: " in small and "--min-examples-per-class" in small
    assert runner.invoke(app, ["models", "runs"]).output.strip() == "no training runs yet"

    trained = runner.invoke(
        app,
        ["train", "--base-data", str(export), *columns, "--label-map", "stars5",
         "--significance", "1", *FAST],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert trained.output.count("training run ") == 1  # one summary
    # Progress after the epochs, through evaluation and saving:
    assert "preparing the candidate as it would serve, then evaluating it" in trained.output
    assert "saving the candidate to the model store" in trained.output
    assert "promoted" in trained.output
    assert "base_empty_text=1" in trained.output  # every drop counted
    runs = runner.invoke(app, ["models", "runs", "--json"]).output.splitlines()
    assert len(runs) == 1 and '"decision": "promoted"' in runs[0]


def test_debug_shows_the_traceback(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "train", "--base-data", str(tmp_path / "nope.csv")])
    assert result.exit_code != 0 and result.exception is not None
    assert "no such file" in str(result.exception)


COLUMNS = ["--no-header", "--text-field", "2", "--label-field", "3", "--label-map", "stars5"]


def start_training(export: Path, scratch_root: Path) -> tuple[subprocess.Popen[str], Path]:
    """A real `sentiloop train` process, once it is training (its scratch directory made)."""
    scratch_root.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "sentiloop"), "train", "--base-data", str(export),
         *COLUMNS, "--significance", "1", "--epochs", "50", "--batch-size", "2",
         "--max-length", "32", "--no-progress"],
        env=os.environ | {"TMPDIR": str(scratch_root)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    training = wait_until(lambda: any(scratch_root.glob("sentiloop-candidate-*")), timeout_s=120)
    if not training:
        process.kill()
        pytest.fail(f"training never started: {process.communicate()[0][-3000:]}")
    (scratch,) = scratch_root.glob("sentiloop-candidate-*")
    return process, scratch


def runs_of(runner: CliRunner) -> list[dict[str, object]]:
    result = runner.invoke(app, ["models", "runs", "--json"])
    return [json.loads(line) for line in result.output.splitlines()]


def test_sigterm_fails_the_run_releases_the_lock_and_cleans_up(
    runner: CliRunner, tmp_path: Path
) -> None:
    export = write_export(tmp_path / "reviews.csv")
    process, scratch = start_training(export, tmp_path / "tmp")
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if line.startswith("error: ")] == [
        "error: training stopped by SIGTERM: the run is recorded failed, the lock released"
    ]
    assert not scratch.exists()
    (run,) = runs_of(runner)
    assert run["status"] == "failed" and run["error"] == "Terminated: SIGTERM"
    assert runner.invoke(app, ["locks", "list"]).output.strip() == "no locks held"
    again = runner.invoke(app, ["train", "--base-data", str(export), *COLUMNS, *FAST])
    assert again.exit_code == 0, again.output


def test_a_sigkilled_runs_lock_is_taken_over_and_its_scratch_removed(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = write_export(tmp_path / "reviews.csv")
    process, scratch = start_training(export, tmp_path / "tmp")
    process.kill()
    process.communicate(timeout=30)
    listed = runner.invoke(app, ["locks", "list"]).output.splitlines()
    assert listed[0].split() == ["name", "holder", "expires_at", "state"]
    assert listed[1].startswith("training") and listed[1].endswith("holder gone")
    assert f":{process.pid} " in listed[1]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    again = runner.invoke(app, ["train", "--base-data", str(export), *COLUMNS, *FAST])
    assert again.exit_code == 0, again.output
    assert not scratch.exists()
    killed, _ = sorted(runs_of(runner), key=lambda run: str(run["started_at"]))
    assert killed["status"] == "failed"
    assert str(killed["error"]).startswith("abandoned: its process stopped without finishing")


def test_locks_list_and_break(runner: CliRunner) -> None:
    from core import database
    from core.settings import Settings

    assert runner.invoke(app, ["locks", "list"]).output.strip() == "no locks held"
    url = Settings().resolved_database_url
    storage.upgrade(url)
    engine = database.make_engine(url)
    runs.acquire_lock(
        session_factory=database.make_session_factory(engine),
        name="training", holder="other-host:42", ttl=timedelta(hours=1),
    )  # fmt: skip
    engine.dispose()
    (row,) = [json.loads(line) for line in runner.invoke(app, ["locks", "list", "--json"]).output
              .splitlines()]  # fmt: skip
    assert row["holder"] == "other-host:42" and row["state"] == "held"
    refused = error_of(runner.invoke(app, ["locks", "break", "training"]))
    assert "held by other-host:42, which renews it" in refused and "--force" in refused
    broken = runner.invoke(app, ["locks", "break", "training", "--force"])
    assert broken.exit_code == 0 and "broke lock 'training' held by other-host:42" in broken.output
    assert runner.invoke(app, ["locks", "list"]).output.strip() == "no locks held"
    assert error_of(runner.invoke(app, ["locks", "break", "training"])) == (
        "error: no lock 'training' is held"
    )


def store_feedback(count: int) -> None:
    """Corrections of ``count`` logged predictions, stored as the API stores them."""
    from core import database
    from core.settings import Settings
    from storage import store

    url = Settings().resolved_database_url
    storage.upgrade(url)
    engine = database.make_engine(url)
    sessions = database.make_session_factory(engine)
    scores = {"negative": 0.3, "neutral": 0.4, "positive": 0.3}
    records = [
        storage.PredictionRecord(
            id=str(uuid.uuid4()),
            created_at=datetime.now(UTC),
            text=f"late again {n}",
            text_storage="raw",
            text_sha256=str(n),
            label="neutral",
            scores=scores,
            model_version="m",
            template_version="v1",
            latency_ms=1.0,
        )
        for n in range(count)
    ]
    with sessions() as session:
        store.insert_predictions(session=session, records=records)
        session.commit()
    for record in records:
        store.record_feedback(
            session_factory=sessions,
            feedback=storage.FeedbackInput(prediction_id=record.id, label="negative"),
        )
    engine.dispose()


def hold_training_lock(holder: str | None) -> None:
    """Take the training lock for ``holder`` (a live run on another host), or release it."""
    from core import database
    from core.settings import Settings

    engine = database.make_engine(Settings().resolved_database_url)
    sessions = database.make_session_factory(engine)
    if holder is None:
        runs.break_lock(session_factory=sessions, name="training")
    else:
        runs.acquire_lock(
            session_factory=sessions, name="training", holder=holder, ttl=timedelta(hours=1)
        )
    engine.dispose()


def test_train_if_due_trains_when_due_and_tells_not_due_and_busy_apart(
    runner: CliRunner, tmp_path: Path
) -> None:
    export = write_export(tmp_path / "reviews.csv")
    if_due = ["train", "--if-due", "--base-data", str(export), *COLUMNS, "--significance", "1",
              *FAST, "--min-new-feedback", "3"]  # fmt: skip
    # No run recorded: the interval has nothing to count from, only feedback makes it due.
    idle = runner.invoke(app, [*if_due, "--interval-minutes", "0.001"])
    assert idle.exit_code == 0, idle.output
    assert idle.output.strip() == (
        "not due: 0 new feedback rows (of 3), no run recorded yet "
        "(the interval counts from the first run)"
    )
    assert runs_of(runner) == []

    store_feedback(3)
    trained = runner.invoke(app, if_due)
    assert trained.exit_code == 0, trained.output
    assert "due (feedback): 3 new feedback rows (of 3), no run recorded yet" in trained.output
    assert trained.output.count("training run ") == 1
    (run,) = runs_of(runner)
    assert run["trigger"] == "schedule:feedback" and run["status"] == "succeeded"

    # What that run saw no longer counts, and a day has not passed since it.
    rested = runner.invoke(app, if_due)
    assert rested.exit_code == 0, rested.output
    assert rested.output.startswith("not due: 0 new feedback rows (of 3), last run 0.0 h ago")
    assert len(runs_of(runner)) == 1

    # Due on the interval, but a live run elsewhere holds the lock: busy, nothing recorded.
    hold_training_lock("other-host:42")
    busy = runner.invoke(app, [*if_due, "--interval-minutes", "0.001"])
    assert busy.exit_code == EXIT_BUSY == 75, busy.output
    (refused,) = [line for line in busy.output.splitlines() if line.startswith("busy: ")]
    assert "other-host:42" in refused and refused.endswith("; try again later")
    assert len(runs_of(runner)) == 1

    hold_training_lock(None)
    again = runner.invoke(app, [*if_due, "--interval-minutes", "0.001"])
    assert again.exit_code == 0, again.output
    assert "due (interval): 0 new feedback rows (of 3), last run " in again.output
    newest, _ = runs_of(runner)
    assert newest["trigger"] == "schedule:interval" and newest["status"] == "succeeded"


def test_train_if_due_and_schedule_exclude_each_other(runner: CliRunner) -> None:
    both = runner.invoke(app, ["train", "--if-due", "--schedule"])
    assert both.exit_code == 2 and "give --schedule or --if-due, not both" in both.output
