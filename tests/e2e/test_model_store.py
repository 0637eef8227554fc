"""One model store per checkout: a model promoted from the CLI in a shell that sets
neither BENTOML_HOME nor SENTILOOP_HOME's store is the one a server of the same
checkout loads (they used ~/bentoml and ./var/bentoml: the server never served it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ONE_MODEL_PROCESS
from tests.support import ROOT, ServerProcess

pytestmark = pytest.mark.slow


def test_a_model_promoted_from_the_cli_is_served(
    tmp_path: Path, tiny_model_tag: str, bentoml_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    name, _ = tiny_model_tag.split(":")
    # The model, in the store of this "checkout" (SENTILOOP_HOME's bentoml/) only.
    shutil.copytree(bentoml_home / "models" / name, home / "bentoml" / "models" / name)
    monkeypatch.delenv("BENTOML_HOME")
    env = {"SENTILOOP_HOME": str(home), "HOME": str(tmp_path / "user"), **ONE_MODEL_PROCESS}
    server = ServerProcess(env, tmp_path / "server.log")
    try:
        server.wait_ready()
        promoted = subprocess.run(
            [sys.executable, "-m", "sentiloop.cli", "models", "promote", tiny_model_tag],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert promoted.returncode == 0, promoted.stderr
        reloaded = httpx.post(f"{server.url}/v1/admin/reload-models", json={}, timeout=60)
        assert reloaded.status_code == 200, reloaded.text
        served = {m["reference"]: m["model_version"] for m in reloaded.json()["models"]}
        assert served["champion"] == tiny_model_tag, server.log_tail()
    finally:
        server.stop()
    assert not (tmp_path / "user" / "bentoml" / "models" / name).exists()
