"""scripts/venv.sh (the set-up of scripts/serve.sh and scripts/test.sh) installs only
when .venv is missing or pyproject.toml changed, once when two start together.

A fake ``python3`` on PATH stands in for venv and pip (the I/O boundary): it makes
``.venv/bin/python`` and logs each ``pip install``, slowly enough that concurrent
set-ups overlap.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
if [[ "$1 $2" == "-m venv" ]]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit 0; fi
if [[ "$1 $2" == "-m pip" ]]; then sleep 0.5; echo "${@: -1}" >>"$PIP_LOG"; exit 0; fi
exit 1
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\n')
    return repo


def set_up(checkout: Path, spec: str) -> str:
    """Run ensure_venv SPEC in ``checkout``; its stderr."""
    env = {
        **os.environ,
        "PATH": f"{checkout.parent / 'bin'}:{os.environ['PATH']}",
        "PIP_LOG": str(checkout.parent / "pip.log"),
    }
    env.pop("SENTILOOP_VENV", None)
    script = f"set -euo pipefail; source {ROOT / 'scripts' / 'venv.sh'}; ensure_venv '{spec}'"
    done = subprocess.run(
        ["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def installs(checkout: Path) -> list[str]:
    log = checkout.parent / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def test_installs_once_then_only_when_pyproject_changes(checkout: Path) -> None:
    first = set_up(checkout, ".")
    assert "setting up .venv: pip install -e '.' (there is no .venv yet" in first
    second = set_up(checkout, ".")
    assert installs(checkout) == ["."]
    assert second.startswith("using .venv")
    set_up(checkout, ".[dev]")  # the test set-up adds the dev extras once
    set_up(checkout, ".[dev]")
    set_up(checkout, ".")  # which also serve
    assert installs(checkout) == [".", ".[dev]"]
    (checkout / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    changed = set_up(checkout, ".")
    assert "pyproject.toml changed since the last set-up" in changed
    set_up(checkout, ".")
    assert installs(checkout) == [".", ".[dev]", "."]


def test_two_set_ups_at_once_install_once(checkout: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(pool.map(lambda _: set_up(checkout, "."), range(2)))
    assert installs(checkout) == ["."]
    assert sorted(output.split(":")[0].split(" ")[0] for output in outputs) == ["setting", "using"]
