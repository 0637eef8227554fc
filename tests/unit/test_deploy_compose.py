"""deploy/docker-compose.yml retrains by itself: its trainer runs a real
`sentiloop train` on a schedule, on the API's database and model store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT
from tests.unit.test_kubernetes_manifests import sentiloop_command, settings_of


def test_the_compose_trainer_retrains_on_a_schedule_into_the_apis_store() -> None:
    services = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]
    api, trainer = services["sentiloop"], services["trainer"]
    assert sentiloop_command(trainer["command"]).name == "train"
    assert "--schedule" in trainer["command"]
    assert trainer["build"] == api["build"]
    # The model store is under the volume both mount (the image's BENTOML_HOME).
    assert set(trainer["volumes"]) == set(api["volumes"]) == {"sentiloop-data:/data"}
    store = re.search(r"BENTOML_HOME=(\S+)", (ROOT / "Dockerfile").read_text())
    assert store and store.group(1).startswith("/data/")
    assert trainer["environment"]["DATABASE_URL"] == api["environment"]["DATABASE_URL"]
    assert trainer["depends_on"]["postgres"]["condition"] == "service_healthy"


def image_env() -> dict[str, str]:
    """The ``ENV`` of the Dockerfile (one instruction, continued over lines)."""
    text = (ROOT / "Dockerfile").read_text()
    block = re.search(r"^ENV (.*?)(?<!\\)\n", text, re.M | re.S)
    assert block is not None
    pairs = block.group(1).replace("\\\n", " ").split()
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_compose_trainer_and_api_resolve_one_store_database_and_model_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings as each container builds them (the image's ENV, then the service's
    environment): the same model store, database, home and model name, so what the
    trainer promotes is what the API serves."""
    services = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]
    resolved = {
        name: settings_of(image_env() | services[name].get("environment", {}), monkeypatch)
        for name in ("sentiloop", "trainer")
    }
    api, trainer = resolved["sentiloop"], resolved["trainer"]
    assert api.resolved_bentoml_home == trainer.resolved_bentoml_home == Path("/data/bentoml")
    assert api.database_url == trainer.database_url
    assert (api.database_url or "").startswith("postgresql")
    assert (api.home, api.model_name) == (trainer.home, trainer.model_name)
