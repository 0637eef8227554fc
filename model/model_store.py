"""Fine-tuned models in the BentoML model store, with their metadata.

Metadata of every model: ``base_model``, ``template_versions``,
``data_sha256``, ``metrics`` (and whatever else training records, e.g. the
parent model). The store lives under ``<BentoML home>/models``; ``use_store``
points BentoML at the settings' home (``Settings.resolved_bentoml_home``) in
every entry point, so that the CLI that trains and promotes and the server that
loads read one store.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import bentoml
import yaml

REQUIRED_METADATA = ("base_model", "template_versions", "data_sha256", "metrics")
# What BentoML writes of each stored model, in its version's directory.
MODEL_YAML = "model.yaml"
# A full tag, ``name:version``, as BentoML spells one (``bentoml._internal.tag``).
_FULL_TAG = re.compile(r"^([a-z0-9]([-._a-z0-9]*[a-z0-9])?):([a-z0-9]([-._a-z0-9]*[a-z0-9])?)$")


class ModelStoreError(Exception):
    pass


class ModelNotFound(ModelStoreError):
    field = "model"

    def __init__(self, tag: str, where: str | None = None) -> None:
        super().__init__(f"no model {tag!r} in {where or f'the BentoML model store {store_dir()}'}")


def use_store(bentoml_home: Path) -> None:
    """Make ``bentoml_home`` BentoML's home in this process and in those it starts.

    BentoML reads ``BENTOML_HOME`` once, on the first use of its store, and
    defaults to ``~/bentoml``: the CLI and a server started with another
    environment then used two stores, and a promoted model was never served.
    Each entry point (the CLI's callback, the service, a model process) calls
    this first, with the one location the settings resolve.
    """
    os.environ["BENTOML_HOME"] = str(bentoml_home)


def store_dir() -> Path:
    """The directory of the model store BentoML uses in this process (as BentoML
    resolves it: ``$BENTOML_HOME/models``, ``~/bentoml/models`` without it)."""
    home = os.environ.get("BENTOML_HOME", os.path.join(os.path.expanduser("~"), "bentoml"))
    return Path(os.path.expandvars(home)) / "models"


@dataclass(frozen=True)
class StoredModel:
    tag: str
    path: Path
    metadata: Mapping[str, Any]
    created_at: str

    @property
    def template_versions(self) -> list[str]:
        return list(self.metadata.get("template_versions", []))


def _storable(value: Any) -> Any:
    """BentoML metadata takes basic types only: drop None values, tuples become lists."""
    if isinstance(value, Mapping):
        return {str(k): _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value if v is not None]
    return value


def save_model(source_dir: Path, *, name: str, metadata: Mapping[str, Any]) -> StoredModel:
    """Copy a saved Hugging Face model directory into the store as a new version."""
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelStoreError(f"model metadata lacks {missing}")
    with bentoml.models.create(name, metadata=_storable(metadata)) as model:
        shutil.copytree(source_dir, model.path, dirs_exist_ok=True)
    return get_model(str(model.tag))


def get_model(tag: str) -> StoredModel:
    """The stored model ``tag`` names (a full tag, a name for its latest version, or a
    version's prefix, as BentoML resolves them).

    A full tag, which is what the database assigns and the serving path loads, is read
    from the ``model.yaml`` BentoML wrote, as BentoML reads it (``yaml.safe_load``):
    BentoML's store code costs a model process 21 MiB RSS once imported (375 -> 397 MiB
    serving a team's correction of the shipped model, README "Performance and
    accuracy"), a twentieth of what the whole process may take. Everything else goes
    through BentoML.
    """
    exact = _read_full_tag(tag)
    if exact is not None:
        return exact
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise ModelNotFound(tag) from None
    except bentoml.exceptions.BentoMLException as error:  # not a tag: "Invalid Tag ..."
        raise ModelNotFound(tag, f"the BentoML model store {store_dir()} ({error})") from None
    return StoredModel(
        tag=str(model.tag),
        path=Path(model.path),
        metadata=dict(model.info.metadata),
        created_at=model.info.creation_time.isoformat(),
    )


def _read_full_tag(tag: str) -> StoredModel | None:
    """``tag``'s stored model when it is a full tag of a version in the store; else None."""
    match = _FULL_TAG.match(tag)
    if match is None or match.group(3) == "latest":
        return None
    name, version = match.group(1), match.group(3)
    path = store_dir() / name / version
    try:
        info = yaml.safe_load((path / MODEL_YAML).read_text())
    except FileNotFoundError:
        return None
    created = info["creation_time"]
    return StoredModel(
        tag=f"{name}:{version}",
        path=path,
        metadata=dict(info.get("metadata") or {}),
        created_at=created.isoformat() if isinstance(created, datetime) else str(created),
    )


def list_models(name: str) -> list[StoredModel]:
    """Every version of ``name``, oldest first."""
    models = [model for model in bentoml.models.list() if model.tag.name == name]
    models.sort(key=lambda model: model.info.creation_time)
    return [get_model(str(model.tag)) for model in models]
