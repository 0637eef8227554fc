from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.settings import Settings
from service.http.auth import (
    Forbidden,
    KeyRing,
    KeyRingError,
    Scope,
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
    ("entries", "explained"),
    [
        ({"name": "x"}, r"^SENTILOOP_API_KEYS: expected a JSON list of \{name, sha256, scopes\}"),
        (
            [{"name": "x", "sha256": "short", "scopes": ["predict"]}],
            r"^SENTILOOP_API_KEYS\[0\]\.sha256: 64 hex characters are required",
        ),
        (
            [{"name": "x", "sha256": "0" * 64, "scopes": ["everything"]}],
            r"^SENTILOOP_API_KEYS\[0\]\.scopes: a non-empty subset of \['predict', 'feedback'",
        ),
    ],
)
def test_malformed_key_ring_is_explained(entries: object, explained: str) -> None:
    """The message names the variable, the entry and field, and what is expected."""
    with pytest.raises(KeyRingError, match=explained):
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


def test_keys_are_listed_and_revoked_by_name_or_id(tmp_path: Path) -> None:
    """Issue 24, item 19."""
    from service.http.auth import read_key_file, revoke_key

    path = tmp_path / "keys.json"
    crm, ops = add_key(path, "crm", ["predict"]), add_key(path, "ops", ["admin"])
    listed = read_key_file(path)
    assert [(k.name, k.id) for k in listed] == [("crm", hash_key(crm)[:12]),
                                                ("ops", hash_key(ops)[:12])]  # fmt: skip
    assert revoke_key(path, "crm").name == "crm"
    assert revoke_key(path, hash_key(ops)[:12]).name == "ops"
    assert read_key_file(path) == [] and path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyRingError, match="no key named or with id 'crm'"):
        revoke_key(path, "crm")


def test_a_running_key_ring_follows_its_file_within_seconds(tmp_path: Path) -> None:
    from service.http.auth import KEY_FILE_CHECK_INTERVAL_S, revoke_key
    from tests.support import wait_until

    path = tmp_path / "keys.json"
    key = add_key(path, "crm", ["predict"])
    keys = KeyRing.load(None, path)
    assert keys.authorize(key, "predict").name == "crm"
    revoke_key(path, "crm")

    assert wait_until(
        lambda: not _accepted(keys, key, "predict"), timeout_s=KEY_FILE_CHECK_INTERVAL_S + 2
    )
    added = add_key(path, "new", ["feedback"])
    assert wait_until(lambda: _accepted(keys, added, "feedback"), timeout_s=3)
    path.write_text("[{broken")  # a hand edit gone wrong: the loaded keys stay
    time.sleep(KEY_FILE_CHECK_INTERVAL_S + 0.1)
    assert keys.authorize(added, "feedback").name == "new"


def _accepted(keys: KeyRing, key: str, scope: Scope) -> bool:
    try:
        keys.authorize(key, scope)
    except Unauthenticated:
        return False
    return True
