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
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml

REQUIRED_METADATA = ("base_model", "template_versions", "data_sha256", "metrics")


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
    """The directory of the model store BentoML uses in this process."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.model_store_dir.get())


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


def list_models(name: str) -> list[StoredModel]:
    """Every version of ``name``, oldest first."""
    models = [model for model in bentoml.models.list() if model.tag.name == name]
    models.sort(key=lambda model: model.info.creation_time)
    return [get_model(str(model.tag)) for model in models]
