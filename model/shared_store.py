"""Models every replica can read: an S3-compatible object store (issue 21).

The local BentoML store stays where a model is loaded from; with
``SENTILOOP_MODEL_STORE_URL=s3://bucket/prefix`` it is also a cache of the
shared store. Replicas on other machines see the roles in the shared database
but not the trainer's disk, so:

* before a model gets a role (a training run's assignment, ``models promote``,
  a rollback) it is *published*: each file of its BentoML model directory
  (``model.yaml`` with the metadata included) goes to
  ``<prefix>/<name>/<version>/``, then ``manifest.json`` with the size and
  sha256 of each file. The manifest is written last, so a model is in the
  shared store once its manifest is, and a tag's content never changes, so a
  model whose manifest exists is not uploaded again. A delta (``model.deltas``)
  needs its parent to be rebuilt: its stored parents are published first (the
  shipped model is in every installation and is never uploaded);
* a replica asked for a tag its local store lacks *fetches* it (the loader does,
  ``model.loader.stored_model``): the files are downloaded beside the store,
  each checked against the manifest, and only then renamed into the store, under
  a file lock, so the model processes of one machine download it once and a
  corrupt or half-downloaded model is never loaded. The loader then prepares
  the serving file (the ONNX export) off to the side, and the scorer swaps it in
  (``service.inference.scoring``): until then the previous model serves.

boto3 is imported on first use only (``pip install 'sentiloop[s3]'``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from core.cache_entry import file_sha256
from core.file_lock import exclusive_file_lock
from core.settings import Settings
from model import corrections, deltas, model_store
from model.shipped import VERSION_PREFIX

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class SharedStoreError(model_store.ModelStoreError):
    field = "model"


class ModelCorrupt(SharedStoreError):
    """A downloaded file differs from the manifest: the model is not installed."""


@contextlib.contextmanager
def _reported(url: str) -> Iterator[None]:
    """The S3 client's errors (no credentials, an unreachable endpoint, access denied)
    as a SharedStoreError naming the store: one line from the CLI, a refresh error in
    a replica."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (Boto3Error, BotoCoreError, ClientError) as error:
        raise SharedStoreError(f"the shared model store {url}: {error}") from error


def _client(settings: Settings) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise SharedStoreError(
            "SENTILOOP_MODEL_STORE_URL needs boto3: pip install 'sentiloop[s3]' (in a "
            "checkout: .venv/bin/pip install -e '.[s3]')"
        ) from None
    secret = settings.model_store_secret_access_key
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.model_store_endpoint_url,
        region_name=settings.model_store_region,
        aws_access_key_id=settings.model_store_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        # Bounded waits: a refresh that hangs on the network would hold the model
        # process's refresh lock (the old model keeps serving meanwhile).
        config=Config(
            connect_timeout=10, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"}
        ),
    )


@dataclass
class SharedStore:
    """The shared store of ``s3://bucket/prefix``, through one S3 client."""

    bucket: str
    prefix: str
    client: Any

    @classmethod
    def from_settings(cls, settings: Settings) -> SharedStore | None:
        """None when no shared store is configured."""
        if settings.model_store_url is None:
            return None
        url = urlparse(settings.model_store_url)
        return cls(url.netloc, url.path.strip("/"), _client(settings))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, tag: str, name: str) -> str:
        model, version = tag.split(":", 1)
        return "/".join(part for part in (self.prefix, model, version, name) if part)

    def manifest(self, tag: str) -> dict[str, Any] | None:
        """The manifest of ``tag``, or None when the model was never (fully) published."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(tag, MANIFEST))["Body"]
        except self.client.exceptions.NoSuchKey:
            return None
        manifest: dict[str, Any] = json.loads(body.read())
        return manifest

    def has(self, tag: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(tag, MANIFEST))
        except self.client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def upload(self, stored: model_store.StoredModel) -> None:
        """Every file of the stored model, then its manifest."""
        files = {}
        for path in sorted(p for p in stored.path.rglob("*") if p.is_file()):
            name = path.relative_to(stored.path).as_posix()
            self.client.upload_file(str(path), self.bucket, self.key(stored.tag, name))
            files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        manifest = {"tag": stored.tag, "parent": _parent_of(stored.path), "files": files}
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key(stored.tag, MANIFEST),
            Body=json.dumps(manifest, indent=1).encode(),
        )

    def published(self, name: str) -> dict[str, datetime]:
        """The published versions of the model ``name``: tag -> when its manifest was
        written."""
        root = "/".join(part for part in (self.prefix, name) if part) + "/"
        found = {}
        with _reported(self.url):
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root
            ):
                for item in page.get("Contents", []):
                    version, _, rest = item["Key"][len(root) :].partition("/")
                    if rest == MANIFEST:
                        found[f"{name}:{version}"] = item["LastModified"]
        return found

    def parent(self, tag: str) -> str | None:
        """The tag a published delta or correction is built on (None: a whole model, or
        not published). Manifests written before the parent was recorded in them are
        read through the model's own parent file."""
        with _reported(self.url):
            manifest = self.manifest(tag)
            if manifest is None:
                return None
            if "parent" in manifest:
                return manifest["parent"] if isinstance(manifest["parent"], str) else None
            for name in (deltas.DELTA_FILE, corrections.CORRECTION_FILE):
                if name in manifest["files"]:
                    key = self.key(tag, name)
                    body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                    return str(json.loads(body.read())["parent"])
        return None

    def delete(self, tag: str) -> int:
        """Remove a published model; the number of objects removed. The manifest goes
        first: from then on the model counts as never published (a half-deleted one is
        uploaded again in full if it is needed again)."""
        with _reported(self.url):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(tag, MANIFEST))
            removed = 1
            root = self.key(tag, "") + "/"
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root
            ):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                    removed += len(keys)
        return removed

    def download(self, tag: str, destination: Path) -> None:
        """The model's files into ``destination``, each checked against the manifest.
        ModelNotFound when it was never published, ModelCorrupt when a file differs."""
        manifest = self.manifest(tag)
        if manifest is None:
            raise model_store.ModelNotFound(
                tag, f"the BentoML model store {model_store.store_dir()} nor {self.url}"
            )
        for name, expected in manifest["files"].items():
            if name.startswith("/") or ".." in PurePosixPath(name).parts:
                raise ModelCorrupt(f"the manifest of {tag} in {self.url} names {name!r}")
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self.key(tag, name), str(target))
            size, digest = target.stat().st_size, file_sha256(target)
            if size != expected["bytes"] or digest != expected["sha256"]:
                raise ModelCorrupt(
                    f"{name} of {tag} in {self.url} differs from its manifest ({size} bytes, "
                    f"sha256 {digest[:12]}; expected {expected['bytes']} bytes, sha256 "
                    f"{expected['sha256'][:12]}): not installed"
                )


def _parent_of(path: Path) -> str | None:
    """The tag a stored delta or correction is built on; None for a whole model."""
    if deltas.is_delta(path):
        return deltas.parent_of(path)
    if corrections.is_correction(path):
        return corrections.parent_of(path)
    return None


def _stored_parents(stored: model_store.StoredModel) -> list[str]:
    """The stored models a delta or a correction is rebuilt from, nearest first (a
    shipped parent ends the chain: every installation has it)."""
    chain = []
    path = stored.path
    while (parent := _parent_of(path)) is not None:
        if parent.startswith(VERSION_PREFIX):
            break
        chain.append(parent)
        path = model_store.get_model(parent).path
    return chain


def publish(settings: Settings, tag: str | None) -> list[str]:
    """Upload a local model (and the stored parents of a delta, first) to the shared
    store unless it is there; the tags uploaded. A no-op without a shared store, and for
    the shipped and zero-shot models (``tag`` None)."""
    shared = SharedStore.from_settings(settings)
    if shared is None or tag is None or tag.startswith(VERSION_PREFIX):
        return []
    stored = model_store.get_model(tag)
    uploaded = []
    # Parents before children: a model whose manifest is there can be rebuilt.
    for needed in [*reversed(_stored_parents(stored)), stored.tag]:
        started = time.perf_counter()
        with _reported(shared.url):
            if shared.has(needed):
                continue
            shared.upload(model_store.get_model(needed))
        uploaded.append(needed)
        logger.info(
            "published %s to %s (%.1f s)", needed, shared.url, time.perf_counter() - started
        )
    return uploaded


def fetch(settings: Settings, tag: str) -> model_store.StoredModel:
    """Download ``tag`` from the shared store into the local store (once per machine),
    verified; the stored model. ModelNotFound without a shared store or when it lacks
    the model; ModelCorrupt when a file differs from its manifest (nothing installed)."""
    shared = SharedStore.from_settings(settings)
    if shared is None or ":" not in tag:  # only a full name:version names one model
        raise model_store.ModelNotFound(tag)
    store = model_store.store_dir()
    incoming = store.parent / "incoming"
    with exclusive_file_lock(incoming / ".lock"):
        try:  # another process of this machine fetched it meanwhile
            return model_store.get_model(tag)
        except model_store.ModelNotFound:
            pass
        started = time.perf_counter()
        name, version = tag.split(":", 1)
        partial = incoming / hashlib.sha256(tag.encode()).hexdigest()[:16]
        shutil.rmtree(partial, ignore_errors=True)
        try:
            with _reported(shared.url):
                shared.download(tag, partial)
            (store / name).mkdir(parents=True, exist_ok=True)
            partial.replace(store / name / version)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        logger.info("fetched %s from %s (%.1f s)", tag, shared.url, time.perf_counter() - started)
    return model_store.get_model(tag)
