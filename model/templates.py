"""Versioned prompt templates: immutable data files loaded by one registry.

A template file ``<version>.toml`` holds an input wrapper with a ``{text}``
placeholder and one or more verbalizer sentences per label. A version is
*released* when its SHA-256 is recorded in ``released.json`` beside it; from
then on the file must not change: loading a released file whose hash differs,
or a file that was never released, is an error naming the file. Serving and
training render inputs through the same registry.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.labels import LABELS

RELEASED_FILE = "released.json"


class TemplateError(Exception):
    """Base class of template errors."""


class TemplateFileError(TemplateError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"prompt template {path}: {reason}")
        self.path = path


class UnknownTemplateVersion(TemplateError):
    field = "template_version"

    def __init__(self, version: str, known: Sequence[str]) -> None:
        super().__init__(
            f"unknown template_version {version!r}; known versions: {', '.join(known)}"
        )
        self.version = version
        self.known = list(known)


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    description: str
    input_template: str
    verbalizers: Mapping[str, tuple[str, ...]]
    sha256: str

    def render(self, text: str) -> str:
        return self.input_template.format(text=text)

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "description": self.description,
            "input_template": self.input_template,
            "verbalizers": {
                label: list(sentences) for label, sentences in self.verbalizers.items()
            },
            "sha256": self.sha256,
        }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_input_template(path: Path, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TemplateFileError(path, "input_template must be a non-empty string")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as exc:
        raise TemplateFileError(
            path, f"input_template is not a valid format string: {exc}"
        ) from exc
    if fields != ["text"]:
        raise TemplateFileError(
            path,
            f"input_template must contain the placeholder {{text}} exactly once and no other "
            f"placeholders (found {fields}); write literal braces as {{{{ and }}}}",
        )
    return value


def _check_verbalizers(path: Path, value: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise TemplateFileError(path, "[verbalizers] table is missing")
    if set(value) != set(LABELS):
        raise TemplateFileError(
            path, f"[verbalizers] must have exactly the labels {list(LABELS)}, got {sorted(value)}"
        )
    verbalizers: dict[str, tuple[str, ...]] = {}
    for label in LABELS:
        sentences = value[label]
        if (
            not isinstance(sentences, list)
            or not sentences
            or not all(isinstance(s, str) and s.strip() for s in sentences)
        ):
            raise TemplateFileError(
                path, f"verbalizers.{label} must be a non-empty list of non-empty strings"
            )
        verbalizers[label] = tuple(sentences)
    return verbalizers


def parse_template_file(path: Path) -> PromptTemplate:
    """Parse and validate one template file (without the release check)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TemplateFileError(path, f"cannot be read as TOML: {exc}") from exc
    version = data.get("version")
    if version != path.stem:
        raise TemplateFileError(
            path, f"version = {version!r} must equal the file name stem {path.stem!r}"
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise TemplateFileError(path, "description must be a string")
    unknown = set(data) - {"version", "description", "input_template", "verbalizers"}
    if unknown:
        raise TemplateFileError(path, f"unknown keys {sorted(unknown)}")
    return PromptTemplate(
        version=version,
        description=description,
        input_template=_check_input_template(path, data.get("input_template")),
        verbalizers=_check_verbalizers(path, data.get("verbalizers")),
        sha256=file_sha256(path),
    )


def read_released(directory: Path) -> dict[str, str]:
    path = directory / RELEASED_FILE
    if not path.exists():
        return {}
    try:
        released = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise TemplateFileError(path, f"is not valid JSON: {exc}") from exc
    if not isinstance(released, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in released.items()
    ):
        raise TemplateFileError(path, "must map template versions to SHA-256 strings")
    return released


class TemplateRegistry:
    """The released templates of one directory, checked against their recorded hashes."""

    def __init__(self, templates: Mapping[str, PromptTemplate], directory: Path) -> None:
        self._templates = dict(templates)
        self.directory = directory

    @classmethod
    def load(cls, directory: Path) -> TemplateRegistry:
        if not directory.is_dir():
            raise TemplateFileError(directory, "template directory does not exist")
        released = read_released(directory)
        templates: dict[str, PromptTemplate] = {}
        for path in sorted(directory.glob("*.toml")):
            template = parse_template_file(path)
            recorded = released.get(template.version)
            if recorded is None:
                raise TemplateFileError(
                    path,
                    "is not released; run `sentiloop templates release "
                    f"{template.version}` once it is final",
                )
            if recorded != template.sha256:
                raise TemplateFileError(
                    path,
                    f"was changed after release (sha256 {template.sha256[:12]}..., released "
                    f"{recorded[:12]}...); released templates are immutable: restore the file "
                    "and put the change in a new version",
                )
            templates[template.version] = template
        missing = sorted(set(released) - set(templates))
        if missing:
            raise TemplateFileError(
                directory / RELEASED_FILE, f"released versions {missing} have no file"
            )
        if not templates:
            raise TemplateFileError(directory, "holds no template files (*.toml)")
        return cls(templates, directory)

    @property
    def versions(self) -> list[str]:
        return sorted(self._templates)

    def get(self, version: str) -> PromptTemplate:
        try:
            return self._templates[version]
        except KeyError:
            raise UnknownTemplateVersion(version, self.versions) from None

    def __contains__(self, version: object) -> bool:
        return version in self._templates

    def render(self, version: str, texts: Sequence[str]) -> list[str]:
        template = self.get(version)
        return [template.render(text) for text in texts]


def release(directory: Path, version: str) -> str:
    """Record the hash of ``<version>.toml``, making it immutable; returns the hash."""
    path = directory / f"{version}.toml"
    template = parse_template_file(path)
    released = read_released(directory)
    recorded = released.get(version)
    if recorded is not None and recorded != template.sha256:
        raise TemplateFileError(path, "is already released with other content; use a new version")
    released[version] = template.sha256
    (directory / RELEASED_FILE).write_text(
        json.dumps(dict(sorted(released.items())), indent=2) + "\n", encoding="utf-8"
    )
    return template.sha256


def diff(registry: TemplateRegistry, old: str, new: str) -> str:
    """A unified diff between two versions' files."""
    old_path = registry.directory / f"{registry.get(old).version}.toml"
    new_path = registry.directory / f"{registry.get(new).version}.toml"
    return "".join(
        difflib.unified_diff(
            old_path.read_text(encoding="utf-8").splitlines(keepends=True),
            new_path.read_text(encoding="utf-8").splitlines(keepends=True),
            fromfile=old_path.name,
            tofile=new_path.name,
        )
    )
