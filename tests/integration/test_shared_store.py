"""The shared model store (model/shared_store.py) against a real S3 API server
(moto_server): a published model is fetched into a store that lacks it, checked
against its manifest; a corrupt object is refused and never served; a delta brings
its parent along."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import bentoml
import pytest
from pydantic import SecretStr

import storage
from core import database
from core.settings import Settings
from model import deltas, model_store, shared_store
from model.loader import load_classifier
from model.shipped import sentiment_model
from model.templates import TemplateRegistry
from service.inference.scoring import Scorer
from storage import model_roles
from tests.e2e.conftest import TINY_METADATA
from tests.support import S3Server, build_tiny_model
from training.promotion import PrunePlan, prune_shared_store

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(
    tmp_path: Path, tiny_model_dir: Path, bentoml_home: Path, s3_server: S3Server
) -> Settings:
    return Settings(
        home=tmp_path / "home",
        base_model=str(tiny_model_dir),
        model_store_url=f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:8]}",
        model_store_endpoint_url=s3_server.url,
        model_store_region=S3Server.REGION,
        model_store_access_key_id=s3_server.key_id,
        model_store_secret_access_key=SecretStr(s3_server.secret),
    )


def save_tiny(directory: Path, name: str = "shared-tiny") -> model_store.StoredModel:
    return model_store.save_model(directory, name=name, metadata=TINY_METADATA)


def forget_locally(*tags: str) -> None:
    """As on a replica that never had the model."""
    for tag in tags:
        bentoml.models.delete(tag)
        with pytest.raises(model_store.ModelNotFound):
            model_store.get_model(tag)


def shared_key(settings: Settings, tag: str, name: str) -> str:
    shared = shared_store.SharedStore.from_settings(settings)
    assert shared is not None
    return shared.key(tag, name)


def test_a_published_model_is_fetched_checked_and_scores_as_the_original(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    stored = save_tiny(tiny_model_dir)
    original, _ = load_classifier(settings, stored.tag)
    template = TemplateRegistry.load(settings.resolved_templates_dir).get("v1")
    texts = [template.render(text) for text in ("great service", "awful, never again")]
    expected = original.predict(texts, template)

    assert shared_store.publish(settings, stored.tag) == [stored.tag]
    assert shared_store.publish(settings, stored.tag) == []  # there already: not again
    forget_locally(stored.tag)

    # As a replica loads it: nothing of this model in its cache either (an export or
    # tokenizer cached by the load above would score without the fetched weights).
    replica = settings.model_copy(
        update={"home": tmp_path / "replica", "cache_dir": tmp_path / "replica-cache"}
    )
    fetched, metadata = load_classifier(replica, stored.tag)
    assert fetched.version == stored.tag
    assert metadata["data_sha256"] == TINY_METADATA["data_sha256"]
    assert model_store.get_model(stored.tag).metadata == stored.metadata
    assert fetched.predict(texts, template) == expected


def test_a_corrupt_object_is_refused_and_the_previous_model_keeps_serving(
    settings: Settings, tiny_model_dir: Path, s3_server: S3Server, tmp_path: Path
) -> None:
    serving = save_tiny(tiny_model_dir)
    corrupt = save_tiny(build_tiny_model(tmp_path / "other", seed=1))
    shared_store.publish(settings, corrupt.tag)
    forget_locally(corrupt.tag)
    key = shared_key(settings, corrupt.tag, "model.safetensors")
    body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    flipped = body[:-1] + bytes([body[-1] ^ 0xFF])  # same size, one byte changed
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=flipped)

    with pytest.raises(shared_store.ModelCorrupt, match=r"model\.safetensors .* differs"):
        load_classifier(settings, corrupt.tag)
    with pytest.raises(model_store.ModelNotFound):  # nothing half-installed
        model_store.get_model(corrupt.tag)

    roles = {"champion": serving.tag}
    scorer = Scorer(settings, TemplateRegistry.load(settings.resolved_templates_dir), roles.get)
    scorer.load(["champion"])
    roles["champion"] = corrupt.tag
    assert scorer.refresh() == []
    assert "ModelCorrupt" in (scorer.last_refresh_error or "")
    assert scorer.model("champion").classifier.version == serving.tag
    leftovers = [p for p in (model_store.store_dir().parent / "incoming").iterdir()]
    assert [p.name for p in leftovers] == [".lock"]


def test_a_model_never_published_names_both_stores(settings: Settings) -> None:
    with pytest.raises(model_store.ModelNotFound, match=r"nor s3://"):
        load_classifier(settings, "shared-tiny:neverpublished")
    with pytest.raises(model_store.ModelNotFound, match="never-saved"):  # no version
        load_classifier(settings, "never-saved")


def make_delta(
    parent: model_store.StoredModel, scratch: Path, name: str = "shared-delta"
) -> model_store.StoredModel:
    """A LoRA delta on a stored parent, as a retraining run stores it (model.deltas)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        sentiment_model(parent.path),
        LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"]),
    )
    model.save_pretrained(str(scratch / "adapter"))
    delta = deltas.write_delta(
        scratch / "adapter", scratch / "delta", parent=parent.tag, temperature=1.0
    )
    return model_store.save_model(delta, name=name, metadata=TINY_METADATA | {"stored_as": "delta"})


def test_a_delta_is_published_after_its_parent_and_rebuilt_from_both(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    parent = save_tiny(tiny_model_dir)
    delta = make_delta(parent, tmp_path)
    assert shared_store.publish(settings, delta.tag) == [parent.tag, delta.tag]
    forget_locally(delta.tag, parent.tag)

    fetched, _ = load_classifier(settings.model_copy(update={"cache_dir": tmp_path / "cache"}),
                                 delta.tag)  # fmt: skip
    assert fetched.version == delta.tag
    assert deltas.parent_of(model_store.get_model(delta.tag).path) == parent.tag
    assert model_store.get_model(parent.tag).tag == parent.tag


def test_a_store_that_cannot_be_written_is_one_error_naming_it(
    settings: Settings, tiny_model_dir: Path
) -> None:
    stored = save_tiny(tiny_model_dir)
    missing = settings.model_copy(update={"model_store_url": "s3://no-such-bucket/models"})
    with pytest.raises(shared_store.SharedStoreError, match="s3://no-such-bucket/models: "):
        shared_store.publish(missing, stored.tag)
    # Credentials the store refuses (the server checks signatures as S3 does): the key
    # id given as the secret, and the two swapped.
    key_id = settings.model_store_access_key_id or ""
    secret = settings.model_store_secret_access_key
    assert secret is not None
    for wrong in (
        {"model_store_secret_access_key": SecretStr(key_id)},
        {"model_store_access_key_id": secret.get_secret_value(),
         "model_store_secret_access_key": SecretStr(key_id)},
    ):  # fmt: skip
        refused = settings.model_copy(update=wrong)
        with pytest.raises(shared_store.SharedStoreError, match=settings.model_store_url or ""):
            shared_store.publish(refused, stored.tag)


def test_pruning_keeps_roles_latest_champions_their_parents_and_fresh_uploads(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path, sqlite_url: str
) -> None:
    """Issue 21: the bucket does not grow with every run. Champions C, D, then B (a
    delta of A), challenger E, and F published but never assigned; keeping the last
    two champions keeps B, its parent A, D and E, and deletes C and F (a dry run
    first deletes nothing); a deleted model promoted again is uploaded again."""
    name = f"prune-{uuid.uuid4().hex[:6]}"
    settings = settings.model_copy(update={"model_name": name})
    storage.upgrade(sqlite_url)
    engine = database.make_engine(sqlite_url)
    sessions = database.make_session_factory(engine)
    built = {
        label: model_store.save_model(
            build_tiny_model(tmp_path / label, seed=seed), name=name, metadata=TINY_METADATA
        )
        for seed, label in enumerate("ACDEF")
    }
    built["B"] = make_delta(built["A"], tmp_path / "delta", name=name)
    tag = {label: stored.tag for label, stored in built.items()}
    for label in "CDBEF":
        shared_store.publish(settings, tag[label])
    with sessions() as session:
        for label in "CDB":
            model_roles.assign(session=session, role="champion", model_tag=tag[label], reason="t")
        model_roles.assign(session=session, role="challenger", model_tag=tag["E"], reason="t")
        session.commit()
    shared = shared_store.SharedStore.from_settings(settings)
    assert shared is not None and set(shared.published(name)) == set(tag.values())

    def prune(dry_run: bool, within: timedelta = timedelta(0)) -> PrunePlan:
        plan = prune_shared_store(settings=settings, sessions=sessions, keep_champions=2,
                                  keep_within=within, dry_run=dry_run)  # fmt: skip
        assert plan is not None
        return plan

    planned = prune(dry_run=True)
    assert planned.deleted == sorted([tag["C"], tag["F"]])
    assert set(planned.kept) == {tag[label] for label in "ABDE"}
    assert planned.kept[tag["A"]] == f"the parent of {tag['B']}"
    assert set(shared.published(name)) == set(tag.values())  # nothing deleted yet

    assert prune(dry_run=False).deleted == planned.deleted
    assert set(shared.published(name)) == {tag[label] for label in "ABDE"}
    for label in "CF":  # no object of theirs left
        root = shared.key(tag[label], "") + "/"
        objects = shared.client.list_objects_v2(Bucket=shared.bucket, Prefix=root)
        assert objects.get("KeyCount", 0) == 0, objects
    # What was published within the window stays, whatever its role.
    late = model_store.save_model(build_tiny_model(tmp_path / "G", seed=9), name=name,
                                  metadata=TINY_METADATA)  # fmt: skip
    shared_store.publish(settings, late.tag)
    assert prune(dry_run=False, within=timedelta(hours=1)).deleted == []
    assert prune(dry_run=False).deleted == [late.tag]
    # C, deleted from the bucket, is uploaded again when it is needed again.
    assert shared_store.publish(settings, tag["C"]) == [tag["C"]]
    engine.dispose()
