"""API keys with scopes, stored hashed.

A key ring is a JSON list of ``{"name", "sha256", "scopes"}`` (from
``SENTILOOP_API_KEYS`` or the file ``SENTILOOP_API_KEYS_FILE``); only SHA-256
hashes of the keys are stored, and keys are never logged. Scopes: ``predict``,
``feedback`` and ``admin`` (export, reload, training); ``admin`` implies the others.
Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Scope = Literal["predict", "feedback", "admin"]
SCOPES: tuple[Scope, ...] = ("predict", "feedback", "admin")
KEY_PREFIX = "slk_"


class AuthError(Exception):
    field = "Authorization"


class Unauthenticated(AuthError):
    """No key, or a key that is not in the key ring (401)."""


class Forbidden(AuthError):
    """A valid key without the scope the endpoint needs (403)."""


class KeyRingError(ValueError):
    pass


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_key_ring(data: object, source: str) -> list[ApiKey]:
    if not isinstance(data, list):
        raise KeyRingError(f"{source}: expected a JSON list of {{name, sha256, scopes}}")
    keys = []
    for index, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise KeyRingError(f"{source}[{index}]: expected an object")
        name, digest, scopes = entry.get("name"), entry.get("sha256"), entry.get("scopes")
        if not isinstance(name, str) or not name:
            raise KeyRingError(f"{source}[{index}].name: a non-empty string is required")
        if not isinstance(digest, str) or len(digest) != 64:
            raise KeyRingError(f"{source}[{index}].sha256: 64 hex characters are required")
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= set(SCOPES):
            raise KeyRingError(f"{source}[{index}].scopes: a non-empty subset of {list(SCOPES)}")
        keys.append(ApiKey(name=name, sha256=digest.lower(), scopes=frozenset(scopes)))
    return keys


class KeyRing:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = list(keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def load(cls, inline_json: str | None, path: Path | None) -> KeyRing:
        keys: list[ApiKey] = []
        if inline_json:
            try:
                data = json.loads(inline_json)
            except ValueError as exc:
                raise KeyRingError(f"SENTILOOP_API_KEYS is not valid JSON: {exc}") from exc
            keys += parse_key_ring(data, "SENTILOOP_API_KEYS")
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise KeyRingError(f"{path}: cannot read the key file: {exc}") from exc
            keys += parse_key_ring(data, str(path))
        return cls(keys)

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        digest = hash_key(presented)
        for key in self._keys:
            if hmac.compare_digest(digest, key.sha256):
                return key
        raise Unauthenticated("unknown API key")

    def authorize(self, presented: str | None, scope: Scope) -> ApiKey:
        key = self.authenticate(presented)
        if not key.allows(scope):
            raise Forbidden(f"API key {key.name!r} lacks the {scope!r} scope")
        return key


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return headers.get("x-api-key") or None


def add_key(path: Path, name: str, scopes: Iterable[str]) -> str:
    """Create a key, append its hash to the key file, return the key (shown once)."""
    chosen = sorted(set(scopes))
    if not chosen or not set(chosen) <= set(SCOPES):
        raise KeyRingError(f"scopes must be a non-empty subset of {list(SCOPES)}")
    entries = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    parse_key_ring(entries, str(path))
    if any(entry["name"] == name for entry in entries):
        raise KeyRingError(f"{path}: a key named {name!r} exists already")
    key = new_key()
    entries.append({"name": name, "sha256": hash_key(key), "scopes": chosen})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key
