"""A new user's path through `sentiloop train`: a CRM's headerless star-rating export
to a promoted model, every mistake on the way answered in a line or two (the
messages are asserted, not just the exit codes), none recorded as a training run."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sentiloop.cli import app
from tests.integration.test_training import PATTERNS, THINGS

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
