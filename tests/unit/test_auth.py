from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.settings import Settings
from service.http.auth import (
    Forbidden,
    KeyRing,
    KeyRingError,
    Unauthenticated,
    add_key,
    hash_key,
    presented_key,
)
from service.http.guard import GuardConfig, required_scope


def ring(**scopes: list[str]) -> tuple[KeyRing, dict[str, str]]:
    keys = {name: f"key-{name}" for name in scopes}
    entries = [{"name": n, "sha256": hash_key(keys[n]), "scopes": s} for n, s in scopes.items()]
    return KeyRing.load(json.dumps(entries), None), keys


def test_scopes_are_enforced_and_admin_implies_all() -> None:
    keys, raw = ring(crm=["predict", "feedback"], ops=["admin"], reader=["predict"])
    assert keys.authorize(raw["crm"], "feedback").name == "crm"
    with pytest.raises(Forbidden, match="'reader' lacks the 'feedback' scope"):
        keys.authorize(raw["reader"], "feedback")
    assert keys.authorize(raw["ops"], "predict").name == "ops"
    with pytest.raises(Unauthenticated, match="missing"):
        keys.authorize(None, "predict")
    with pytest.raises(Unauthenticated, match="unknown"):
        keys.authorize("key-nobody", "predict")


def test_key_is_read_from_bearer_or_x_api_key() -> None:
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({}) is None


def test_add_key_stores_only_the_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = add_key(path, "crm", ["predict"])
    stored = path.read_text()
    assert key not in stored and hash_key(key) in stored
    assert path.stat().st_mode & 0o777 == 0o600
    assert KeyRing.load(None, path).authorize(key, "predict").name == "crm"
    with pytest.raises(KeyRingError, match="exists already"):
        add_key(path, "crm", ["predict"])
    with pytest.raises(KeyRingError, match="subset"):
        add_key(path, "other", ["root"])


@pytest.mark.parametrize(
    "entries",
    [
        {"name": "x"},
        [{"name": "x", "sha256": "short", "scopes": ["predict"]}],
        [{"name": "x", "sha256": "0" * 64, "scopes": ["everything"]}],
    ],
)
def test_malformed_key_ring_is_explained(entries: object) -> None:
    with pytest.raises(KeyRingError):
        KeyRing.load(json.dumps(entries), None)


def test_auth_defaults_required_on_postgres_disabled_on_sqlite(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).resolved_auth == "disabled"
    assert Settings(database_url="postgresql+psycopg://h/db").resolved_auth == "required"
    assert (
        Settings(database_url="postgresql+psycopg://h/db", auth="disabled").resolved_auth
        == "disabled"
    )


def test_required_auth_without_keys_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="no API keys are configured"):
        GuardConfig.from_settings(Settings(database_url="postgresql+psycopg://h/db"))


def test_route_scopes() -> None:
    assert required_scope("/v1/predict") == "predict"
    assert required_scope("/v1/feedback") == "feedback"
    assert required_scope("/v1/feedback/export") == "admin"
    assert required_scope("/v1/admin/reload-models") == "admin"
    assert required_scope("/v1/models") == "predict"
    assert required_scope("/readyz") is None and required_scope("/metrics") is None
