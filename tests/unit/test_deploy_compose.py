"""deploy/docker-compose.yml retrains by itself: its trainer runs a real
`sentiloop train` on a schedule, on the API's database and model store."""

from __future__ import annotations

import re

import yaml

from tests.support import ROOT
from tests.unit.test_kubernetes_manifests import sentiloop_command


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
