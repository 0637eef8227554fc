"""The models commands on a real SQLite file and the BentoML store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model import model_store
from sentiloop.cli import app

METADATA = {"base_model": "tiny", "template_versions": ["v1"], "data_sha256": "x", "metrics": {}}


def test_promote_history_list_and_rollback(
    tmp_path: Path, tiny_model_dir: Path, bentoml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    monkeypatch.setenv("SENTILOOP_MODEL_NAME", "cli-models")
    first = model_store.save_model(tiny_model_dir, name="cli-models", metadata=METADATA)
    second = model_store.save_model(tiny_model_dir, name="cli-models", metadata=METADATA)
    runner = CliRunner()
    for tag in (first.tag, second.tag):
        result = runner.invoke(app, ["models", "promote", tag])
        assert result.exit_code == 0 and f"champion: {tag}" in result.output
    listed = runner.invoke(app, ["models", "list"]).output.splitlines()
    assert listed[0].split() == ["tag", "role", "created_at", "holdout_macro_f1", "languages"]
    assert [line.split()[:2] for line in listed[1:]] == [[first.tag, "-"], [second.tag, "champion"]]
    as_json = runner.invoke(app, ["models", "list", "--json"]).output.splitlines()
    assert [json.loads(line)["role"] for line in as_json] == [None, "champion"]
    history = runner.invoke(app, ["models", "history"]).output.splitlines()
    assert history[0].split() == ["when", "role", "model", "reason"]
    assert [line.split()[2] for line in history[1:]] == [second.tag, first.tag]
    rolled = runner.invoke(app, ["models", "rollback"])
    assert rolled.exit_code == 0 and f"champion: {first.tag}" in rolled.output
    runs = runner.invoke(app, ["models", "runs"])
    assert runs.exit_code == 0 and runs.output.strip() == "no training runs yet"


def test_experiment_and_import_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    runner = CliRunner()
    report = runner.invoke(app, ["experiments", "report"])
    assert report.exit_code == 0 and "no predictions in the window" in report.output
    concluded = runner.invoke(app, ["experiments", "conclude"])
    assert concluded.exit_code == 2
    assert concluded.output.strip().splitlines() == [
        "error: no arm beats the control significantly (no arms compared); name a template "
        "version with --winner to decide anyway"
    ]
    missing = runner.invoke(app, ["feedback", "import", str(tmp_path / "nope.csv")])
    assert (
        missing.exit_code == 2
        and missing.output.strip() == f"error: {tmp_path / 'nope.csv'}: no such file"
    )
    reverted = runner.invoke(app, ["experiments", "revert", "--reason", "x"])
    assert reverted.exit_code == 2 and "no template decision to revert" in reverted.output
