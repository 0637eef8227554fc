from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from core.settings import packaged_templates_dir
from sentiloop.cli import app

runner = CliRunner()


def all_command_paths() -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(command: Any, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(get_command(app), [])
    return paths


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "sentiloop")
def test_every_command_has_help(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_help_shows_every_option_name_in_full_when_not_on_a_terminal() -> None:
    result = runner.invoke(app, ["train", "--help"], terminal_width=60)
    for option in ("--max-base-examples", "--feedback-holdout-fraction", "--min-feedback-rows",
                   "--base-tolerance", "--start-from"):  # fmt: skip
        assert option in result.output, option
    assert "…" not in result.output


def test_every_command_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for path in all_command_paths():
        if path:
            assert f"sentiloop {' '.join(path)}" in readme, path


def test_templates_list_show_diff_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "templates"
    shutil.copytree(packaged_templates_dir(), directory)
    monkeypatch.setenv("SENTILOOP_TEMPLATES_DIR", str(directory))
    listed = runner.invoke(app, ["templates", "list"])
    assert listed.exit_code == 0 and [
        line.split("\t")[0] for line in listed.output.splitlines()
    ] == ["v1", "v2"]
    shown = json.loads(runner.invoke(app, ["templates", "show", "v2"]).output)
    assert shown["input_template"] == "{text}"
    assert (
        '+input_template = "{text}"' in runner.invoke(app, ["templates", "diff", "v1", "v2"]).output
    )
    (directory / "v3.toml").write_text((directory / "v2.toml").read_text().replace('"v2"', '"v3"'))
    unreleased = runner.invoke(app, ["templates", "list"])
    assert unreleased.exit_code != 0 and "v3.toml" in str(unreleased.exception)
    released = runner.invoke(app, ["templates", "release", "v3"])
    assert released.exit_code == 0 and "released v3" in released.output
    assert "v3" in runner.invoke(app, ["templates", "list"]).output


def test_db_upgrade_then_export_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTILOOP_HOME", str(tmp_path))
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert (tmp_path / "sentiloop.db").exists()
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["feedback", "export", "--format", "csv", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("feedback_id,")
    assert f"wrote 0 feedback rows to {out}" in result.stderr
    # Without --format, the file's extension says it (it was JSON Lines in a .csv).
    by_name = tmp_path / "by-name.CSV"
    assert runner.invoke(app, ["feedback", "export", "--output", str(by_name)]).exit_code == 0
    assert by_name.read_text().startswith("feedback_id,")
    as_jsonl = tmp_path / "out.jsonl"
    assert runner.invoke(app, ["feedback", "export", "--output", str(as_jsonl)]).exit_code == 0
    assert as_jsonl.read_text() == ""  # no rows, no header
    bad = runner.invoke(app, ["feedback", "export", "--format", "xml"])
    assert bad.exit_code == 2


def test_predict_needs_text_or_file() -> None:
    result = runner.invoke(app, ["predict"])
    assert result.exit_code == 2 and "give a TEXT or --file" in result.output
