"""The Bento and the Dockerfile ship what the service needs at run time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

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
    for package in top_level_packages():
        assert (source / package / "__init__.py").is_file(), package
    assert not (source / "tests").exists()


def top_level_packages() -> list[str]:
    """The packages pyproject.toml installs, top level only: what ships."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        packages = tomllib.load(file)["tool"]["setuptools"]["packages"]
    return sorted({name.split(".")[0] for name in packages})


def test_the_bento_installs_what_pyproject_installs() -> None:
    """The Bento's packages are pyproject.toml's dependencies (BentoML aside: it
    builds the Bento) and the s3 extra, with the same versions: the Bento had lacked
    scipy (the gate's test, imported by a scheduled retraining), psutil, pyyaml and
    boto3 (the shared model store of replicas)."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["s3"]]
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    shipped = bentofile["python"]["packages"]

    def normalized(requirements: list[str]) -> set[str]:
        return {str(Requirement(r)) for r in requirements}

    assert normalized(shipped) == normalized(wanted) - {
        str(Requirement(r)) for r in wanted if Requirement(r).name == "bentoml"
    }


def test_dockerfile_copies_every_package_and_serves_on_3000() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = top_level_packages()
    assert {"core", "feedback", "service", "sentiloop"} <= set(packages)  # the list is read
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile, package
    assert "EXPOSE 3000" in dockerfile.splitlines()
    [command] = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    arguments = json.loads(command.removeprefix("CMD "))
    assert arguments[:2] == ["sentiloop", "serve"]
    assert arguments[arguments.index("--port") + 1] == "3000"
    assert arguments[arguments.index("--host") + 1] == "0.0.0.0"  # reached from outside
    assert "http://127.0.0.1:3000/readyz" in dockerfile  # the health check asks that port
    assert "SENTILOOP_AUTH=required" in dockerfile  # reached from other hosts: keys


def test_dockerfile_installs_the_cpu_build_of_the_pinned_torch() -> None:
    """PyPI's Linux torch wheel is the CUDA build (GBs of nvidia-* wheels): the image
    installs ``+cpu`` of the exact version pyproject.toml pins first, so that
    ``pip install .`` finds the pin satisfied. A pin bumped in one place only would
    let pip replace it with the CUDA build."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    [pin] = [d for d in dependencies if d.startswith("torch==")]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'"{pin}+cpu"' in dockerfile
    assert "torch.version.cuda is not None" in dockerfile  # the build checks what it got
