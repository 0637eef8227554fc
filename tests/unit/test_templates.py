from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.settings import packaged_templates_dir
from model.templates import (
    TemplateFileError,
    TemplateRegistry,
    UnknownTemplateVersion,
    diff,
    release,
)

GOOD = """version = "{version}"
description = "test"
input_template = "Ticket: {{text}}"

[verbalizers]
negative = ["bad"]
neutral = ["meh"]
positive = ["good", "great"]
"""


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "t1.toml").write_text(GOOD.format(version="t1"))
    release(directory, "t1")
    return directory


def test_packaged_templates_load_and_are_released() -> None:
    registry = TemplateRegistry.load(packaged_templates_dir())
    assert "v1" in registry.versions
    assert registry.get("v1").render("hello") == "Customer message: hello"


def test_render_keeps_user_braces_literal(template_dir: Path) -> None:
    registry = TemplateRegistry.load(template_dir)
    assert registry.render("t1", ["{0} {text} }{"]) == ["Ticket: {0} {text} }{"]


def test_unknown_version_lists_known_versions(template_dir: Path) -> None:
    registry = TemplateRegistry.load(template_dir)
    with pytest.raises(UnknownTemplateVersion) as caught:
        registry.get("t9")
    assert caught.value.known == ["t1"]
    assert "t1" in str(caught.value)


def test_changing_a_released_file_is_an_error_naming_the_file(template_dir: Path) -> None:
    path = template_dir / "t1.toml"
    path.write_text(path.read_text().replace("Ticket", "Case"))
    with pytest.raises(TemplateFileError, match="changed after release") as caught:
        TemplateRegistry.load(template_dir)
    assert caught.value.path == path


def test_unreleased_file_is_refused_until_released(template_dir: Path) -> None:
    (template_dir / "t2.toml").write_text(GOOD.format(version="t2"))
    with pytest.raises(TemplateFileError, match="not released"):
        TemplateRegistry.load(template_dir)
    release(template_dir, "t2")
    assert TemplateRegistry.load(template_dir).versions == ["t1", "t2"]


def test_release_refuses_to_overwrite_a_released_hash(template_dir: Path) -> None:
    path = template_dir / "t1.toml"
    path.write_text(path.read_text().replace("bad", "awful"))
    with pytest.raises(TemplateFileError, match="already released"):
        release(template_dir, "t1")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("version = ", "cannot be read as TOML"),
        (GOOD.format(version="other"), "must equal the file name"),
        (GOOD.format(version="bad").replace("{text}", "{txt}"), "placeholder"),
        (GOOD.format(version="bad").replace("{text}", "no placeholder"), "placeholder"),
        (GOOD.format(version="bad").replace('neutral = ["meh"]\n', ""), "exactly the labels"),
        (GOOD.format(version="bad").replace('["bad"]', "[]"), "verbalizers.negative"),
        ('extra = "x"\n' + GOOD.format(version="bad"), "unknown keys"),
    ],
)
def test_malformed_template_file_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    directory = tmp_path / "templates"
    directory.mkdir()
    path = directory / "bad.toml"
    path.write_text(content)
    with pytest.raises(TemplateFileError, match=message) as caught:
        TemplateRegistry.load(directory)
    assert str(path) in str(caught.value)


def test_diff_shows_changed_lines(tmp_path: Path) -> None:
    directory = tmp_path / "templates"
    shutil.copytree(packaged_templates_dir(), directory)
    text = diff(TemplateRegistry.load(directory), "v1", "v2")
    assert '-input_template = "Customer message: {text}"' in text
    assert '+input_template = "{text}"' in text
