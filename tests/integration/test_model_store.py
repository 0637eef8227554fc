"""The model store: a full tag is read from BentoML's files without BentoML's store code
(a model process then stays 21 MiB lighter), and reads exactly what BentoML reads."""

import json
import subprocess
import sys
from pathlib import Path

import bentoml
import pytest

from model import model_store
from tests.support import ROOT

METADATA = {
    "base_model": "tiny",
    "template_versions": ["v1", "v2"],
    "data_sha256": "x",
    "metrics": {"feedback_holdout": {"n": 3, "macro_f1": 0.5, "recall": {"neutral": 0.0}}},
    "stored_as": "full",
    "counts": {"train": 10, "holdout": 0},
}


@pytest.fixture(scope="module")
def stored(tiny_model_dir: Path) -> model_store.StoredModel:
    return model_store.save_model(tiny_model_dir, name="store-test", metadata=METADATA)


def test_a_full_tag_reads_what_bentoml_reads(stored: model_store.StoredModel) -> None:
    bento = bentoml.models.get(stored.tag)
    read = model_store.get_model(stored.tag)
    assert read.tag == str(bento.tag)
    assert read.path == Path(bento.path)
    assert read.metadata == dict(bento.info.metadata) == METADATA
    assert read.created_at == bento.info.creation_time.isoformat()
    assert model_store.store_dir() == Path(bento.path).parent.parent


def test_names_latest_and_version_prefixes_still_resolve(
    stored: model_store.StoredModel,
) -> None:
    name, version = stored.tag.split(":")
    newest = model_store.list_models(name)[-1].tag
    assert model_store.get_model(name).tag == newest
    assert model_store.get_model(f"{name}:latest").tag == newest
    assert model_store.get_model(f"{name}:{version[:6]}").tag == stored.tag


def test_a_full_tag_not_in_the_store_is_not_found(stored: model_store.StoredModel) -> None:
    with pytest.raises(model_store.ModelNotFound, match="store-test:nosuchversion"):
        model_store.get_model("store-test:nosuchversion")


PROBE = """
import json, sys
from model import model_store
model_store.get_model(sys.argv[1])
print(json.dumps("bentoml._internal.store" in sys.modules))
"""


def test_reading_a_full_tag_does_not_import_bentomls_store(
    stored: model_store.StoredModel,
) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, stored.tag],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert json.loads(probe.stdout.strip().splitlines()[-1]) is False
