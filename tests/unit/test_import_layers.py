"""The house plan, checked: every import points down the layers.

    core                  settings, database engine/sessions, logging, file locks
    model      storage    the sentiment model | the database (log, feedback, runs, roles)
    feedback   training   the loop's analysis (A/B, review queue, estimates) | re-fine-tuning
    connectors            CRM webhooks: signatures checked, payloads read (no HTTP, no database)
    service               the BentoML service (http over inference)
    sentiloop             the command line, on top of everything

A package imports only the layers below it; inside ``service``, ``http`` may use
``inference`` but not the reverse, and the shared service modules (metrics,
monitoring, periodic) use neither. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "model": {"core"},
    "storage": {"core"},
    "feedback": {"core", "model", "storage"},
    "training": {"core", "model", "storage"},
    "connectors": {"core", "model", "storage", "feedback"},
    "service": {"core", "model", "storage", "feedback", "connectors"},
    "sentiloop": {"core", "model", "storage", "feedback", "connectors", "training", "service"},
}
SERVICE_ROOMS: dict[str, set[str]] = {
    "service.inference": set(),
    "service.http": {"service.inference"},
    "service.bento": {"service.http", "service.inference"},
    "service": set(),  # metrics, monitoring, periodic
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_files() -> list[Path]:
    return sorted(path for package in ALLOWED for path in (ROOT / package).rglob("*.py"))


def room_of(module: str) -> str:
    for room in sorted(SERVICE_ROOMS, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return module


def service_room_may_import(module: str, imported: str) -> bool:
    """Own room, a room below, or the shared service modules (from any room but theirs)."""
    source, target = room_of(module), room_of(imported)
    if target in (source, *SERVICE_ROOMS[source]):
        return True
    return target == "service"


@pytest.mark.parametrize("path", project_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    module = module_name(path)
    package = module.split(".")[0]
    wrong = []
    for imported in imported_modules(path):
        target = imported.split(".")[0]
        if target in ALLOWED and target != package and target not in ALLOWED[package]:
            wrong.append(imported)
        if package == target == "service" and not service_room_may_import(module, imported):
            wrong.append(imported)
    assert not wrong, f"{module} imports {sorted(wrong)} against the layers"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    """The rule is not vacuous: an upward import is found."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from service.http import api\n")
    assert "service.http" in imported_modules(sample)
    assert "service" not in ALLOWED["model"]
    assert not service_room_may_import("service.inference.worker", "service.http.api")
    assert not service_room_may_import("service.metrics", "service.inference.batching")
    assert service_room_may_import("service.http.errors", "service.inference.scoring")


def test_training_exports_its_public_nouns_without_loading_torch() -> None:
    import subprocess
    import sys

    import training

    assert sorted(training.__all__) == sorted(training._WHERE)
    for name in training.__all__:
        assert getattr(training, name).__name__ == name
    probe = "import sys, sentiloop.cli; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert loaded.stdout.strip() == "False", loaded.stderr  # the CLI starts fast
