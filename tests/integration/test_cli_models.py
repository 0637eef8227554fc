"""The models commands on a real SQLite file and the BentoML store."""

from __future__ import annotations

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
    assert [line.split("\t")[:2] for line in listed] == [[first.tag, "-"], [second.tag, "champion"]]
    history = runner.invoke(app, ["models", "history"]).output.splitlines()
    assert [line.split("\t")[2] for line in history] == [second.tag, first.tag]
    rolled = runner.invoke(app, ["models", "rollback"])
    assert rolled.exit_code == 0 and f"champion: {first.tag}" in rolled.output
    assert runner.invoke(app, ["models", "runs"]).exit_code == 0
