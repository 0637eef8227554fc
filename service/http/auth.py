"""API keys with scopes, stored hashed.

A key ring is a JSON list of ``{"name", "sha256", "scopes"}`` (from
``SENTILOOP_API_KEYS`` or the file ``SENTILOOP_API_KEYS_FILE``); only SHA-256
hashes of the keys are stored, and keys are never logged. Scopes: ``predict``,
``feedback`` and ``admin`` (export, reload, training); ``admin`` implies the others.
Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

Revoking a key is removing it from the key file (``sentiloop keys revoke``); a
running server reloads the file when it changes (its modification time, size or
inode, looked at no more than once a second on requests): a revoked key is
refused within about a second, with no restart. The CLI rewrites the file whole
(written aside, renamed into place, under a lock), so the server never reads half
a file; a file that cannot be read or parsed keeps the keys last loaded, with an
error in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.file_lock import exclusive_file_lock

logger = logging.getLogger(__name__)

Scope = Literal["predict", "feedback", "admin"]
SCOPES: tuple[Scope, ...] = ("predict", "feedback", "admin")
KEY_PREFIX = "slk_"
# How often a request may look at the key file for a change (one stat call).
KEY_FILE_CHECK_INTERVAL_S = 1.0
# A key's id: the start of its hash, safe to show and to name the key by.
KEY_ID_CHARS = 12


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

    @property
    def id(self) -> str:
        return self.sha256[:KEY_ID_CHARS]


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


def read_key_file(path: Path) -> list[ApiKey]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyRingError(f"{path}: cannot read the key file: {exc}") from exc
    return parse_key_ring(data, str(path))


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file does (a rename into place changes the inode)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


class KeyRing:
    """The keys of ``SENTILOOP_API_KEYS`` and of the key file, the file's reloaded
    when it changes (see the module's docstring)."""

    def __init__(
        self, keys: Iterable[ApiKey], *, path: Path | None = None, inline: Iterable[ApiKey] = ()
    ) -> None:
        self._inline = list(inline)
        self._keys = list(keys)
        self._path = path
        self._stamp = _file_stamp(path) if path is not None else None
        self._next_check = time.monotonic() + KEY_FILE_CHECK_INTERVAL_S

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def load(cls, inline_json: str | None, path: Path | None) -> KeyRing:
        inline: list[ApiKey] = []
        if inline_json:
            try:
                data = json.loads(inline_json)
            except ValueError as exc:
                raise KeyRingError(f"SENTILOOP_API_KEYS is not valid JSON: {exc}") from exc
            inline = parse_key_ring(data, "SENTILOOP_API_KEYS")
        from_file = read_key_file(path) if path is not None else []
        return cls(inline + from_file, path=path, inline=inline)

    def reload_if_changed(self) -> None:
        """Reload the key file if it changed since it was read (checked at most once
        per ``KEY_FILE_CHECK_INTERVAL_S``); keep the keys loaded when it cannot be read."""
        if self._path is None or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + KEY_FILE_CHECK_INTERVAL_S
        stamp = _file_stamp(self._path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            from_file = read_key_file(self._path)
        except KeyRingError as error:
            logger.error("API keys not reloaded, the %d loaded stay: %s", len(self), error)
            return
        self._keys = self._inline + from_file
        logger.info("API keys reloaded from %s: %d keys", self._path, len(self._keys))

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        self.reload_if_changed()
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


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _read_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    read_key_file(path)  # validated
    entries: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return entries


def _write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write the key file whole: aside (mode 0600), then renamed into place, so a server
    reloading it never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(json.dumps(entries, indent=2) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def add_key(path: Path, name: str, scopes: Iterable[str]) -> str:
    """Create a key, append its hash to the key file, return the key (shown once)."""
    chosen = sorted(set(scopes))
    if not chosen or not set(chosen) <= set(SCOPES):
        raise KeyRingError(f"scopes must be a non-empty subset of {list(SCOPES)}")
    with exclusive_file_lock(_lock_path(path)):
        entries = _read_entries(path)
        if any(entry["name"] == name for entry in entries):
            raise KeyRingError(f"{path}: a key named {name!r} exists already")
        key = new_key()
        entries.append({"name": name, "sha256": hash_key(key), "scopes": chosen})
        _write_entries(path, entries)
    return key


def revoke_key(path: Path, name_or_id: str) -> ApiKey:
    """Remove the key named ``name_or_id`` (its name, or its id from ``keys list``)
    from the key file; running servers refuse it within seconds."""
    with exclusive_file_lock(_lock_path(path)):
        if not path.exists():
            raise KeyRingError(f"{path}: no key file")
        entries = _read_entries(path)
        keys = parse_key_ring(entries, str(path))
        matches = [i for i, key in enumerate(keys) if name_or_id in (key.name, key.id)]
        if not matches:
            known = ", ".join(f"{key.name} ({key.id})" for key in keys) or "none"
            raise KeyRingError(f"{path}: no key named or with id {name_or_id!r} (keys: {known})")
        if len(matches) > 1:
            raise KeyRingError(f"{path}: {name_or_id!r} names several keys; use the key's id")
        revoked = keys[matches[0]]
        del entries[matches[0]]
        _write_entries(path, entries)
    return revoked
