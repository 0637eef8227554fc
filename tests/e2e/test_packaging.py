"""The Bento and the Dockerfile ship what the service needs at run time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT

pytestmark = pytest.mark.slow


def test_bentoml_build_packages_services_templates_and_migrations(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(ROOT)],
        check=True, env=env, cwd=ROOT, capture_output=True, timeout=300,
    )  # fmt: skip
    [bento] = list((tmp_path / "bentos" / "sentiloop").glob("*/bento.yaml"))
    info = yaml.safe_load(bento.read_text())
    assert {s["name"] for s in info["services"]} == {"sentiloop"}
    source = bento.parent / "src"
    for needed in (
        "model/prompt_templates/v1.toml",
        "model/prompt_templates/released.json",
        "storage/migrations/versions/0001_predictions_and_feedback.py",
        "storage/migrations/script.py.mako",
    ):
        assert (source / needed).is_file(), needed
    assert not (source / "tests").exists()


def test_dockerfile_copies_every_package_and_serves_on_3000() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("core", "model", "storage", "service", "training", "sentiloop"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "torch==2.13.0" in dockerfile and "EXPOSE 3000" in dockerfile
    assert '"sentiloop", "serve"' in dockerfile
    assert "SENTILOOP_AUTH=required" in dockerfile  # reached from other hosts: keys
