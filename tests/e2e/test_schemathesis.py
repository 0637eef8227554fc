"""Property-based requests generated from the OpenAPI spec: never a 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ONE_MODEL_PROCESS, start_server

pytestmark = pytest.mark.slow


def test_generated_requests_never_get_a_server_error(tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(__import__("sys").executable).parent))
    assert st is not None, "schemathesis is a dev dependency"
    server = start_server(tmp_path, ONE_MODEL_PROCESS)
    try:
        result = subprocess.run(
            [st, "run", f"{server.url}/docs.json", "--url", server.url,
             "--checks", "not_a_server_error", "--max-examples", "25",
             "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "1234"],
            capture_output=True, text=True, timeout=480,
        )  # fmt: skip
    finally:
        server.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    tested = re.search(r"Tested: (\d+)", output)
    assert tested is not None and int(tested.group(1)) >= 10, output[-2000:]
