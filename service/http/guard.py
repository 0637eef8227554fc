"""ASGI middleware at the HTTP boundary: body size limit, JSON media type, API-key scopes.

Health, readiness, metrics and OpenAPI stay open; every /v1 endpoint needs a key
with its scope when authentication is on (see ``Settings.resolved_auth``), and
answers only local clients when it is off (unless
``SENTILOOP_ALLOW_UNAUTHENTICATED_REMOTE`` says otherwise). A path with a trailing
slash needs the same scope as the path without it; more than one credential
header is refused (400) rather than one of them silently winning.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any

from core.settings import Settings
from service.http.auth import AuthError, Forbidden, KeyRing, Scope, presented_key
from service.http.paths import restore_path

logger = logging.getLogger(__name__)

ASGIApp = Any
Message = dict[str, Any]


def required_scope(path: str) -> Scope | None:
    """The scope ``path`` needs; a trailing slash changes nothing."""
    path = path.rstrip("/") or "/"
    if path.startswith("/v1/webhooks/"):
        return None  # a CRM's signature is the credential (service.http.webhooks checks it)
    if path == "/v1/predict":
        return "predict"
    if path in ("/v1/feedback", "/v1/feedback/batch"):
        return "feedback"
    if path in ("/v1/feedback/export", "/v1/review-queue") or path.startswith(
        ("/v1/feedback/export/", "/v1/admin/")
    ):
        return "admin"  # logged texts leave the service
    if path == "/v1" or path.startswith("/v1/"):
        return "predict"  # read endpoints: any key that can predict
    return None


def is_loopback(client: tuple[str, int] | None) -> bool:
    if client is None:  # a Unix socket: local by definition
        return True
    try:
        return ipaddress.ip_address(client[0].removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GuardConfig:
    auth_required: bool
    keys: KeyRing
    max_body_bytes: int
    # With authentication off, /v1 answers only local clients unless this is set.
    allow_unauthenticated_remote: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> GuardConfig:
        keys = KeyRing.load(
            settings.api_keys.get_secret_value() if settings.api_keys else None,
            settings.api_keys_file,
        )
        required = settings.resolved_auth == "required"
        if required and not len(keys):
            raise ValueError(
                "authentication is required (PostgreSQL, or SENTILOOP_AUTH=required) but no "
                "API keys are configured: create one with `sentiloop keys create` and set "
                "SENTILOOP_API_KEYS_FILE (or SENTILOOP_AUTH=disabled for local development)"
            )
        if not required:
            logger.warning(
                "API authentication is DISABLED (local development only): /v1 answers %s",
                "every client (SENTILOOP_ALLOW_UNAUTHENTICATED_REMOTE)"
                if settings.allow_unauthenticated_remote
                else "local clients only",
            )
        return cls(required, keys, settings.max_body_bytes, settings.allow_unauthenticated_remote)


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


Rejection = tuple[int, dict[str, Any], dict[str, str]]
_CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")


class GuardConfigSlot:
    """Where the service puts the guard's config once it has built its settings:
    BentoML creates the middleware from its class and options, before the
    service instance (and its settings) exist."""

    def __init__(self) -> None:
        self.config: GuardConfig | None = None


class GuardMiddleware:
    """Checks, in order: body size, media type, access (credentials and scope, or
    the local-only rule without authentication); then replays a streamed body it
    had to read to enforce the size limit."""

    def __init__(self, app: ASGIApp, slot: GuardConfigSlot) -> None:
        self.app = app
        self._slot = slot

    @property
    def config(self) -> GuardConfig:
        config = self._slot.config
        if config is None:
            raise RuntimeError("the guard is used before the service set its config")
        return config

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        restore_path(scope)
        if self._slot.config is None:  # the service is still starting
            await _send_json(send, 503, {"error": "starting; retry shortly", "field": None},
                             {"retry-after": "5"})  # fmt: skip
            return
        config = self.config
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rejection = (
            self._size(headers) or self._media_type(scope, headers) or self._access(scope, headers)
        )
        if rejection is not None:
            await _send_json(send, *rejection)
            return
        if headers.get("content-length") is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body = await _read_body(receive, config.max_body_bytes)
            if body is None:
                await _send_json(send, *self._too_large())
                return
            await self.app(scope, _replaying(body, receive), send)
            return
        await self.app(scope, receive, send)

    def _too_large(self) -> Rejection:
        limit = self.config.max_body_bytes
        body = {"error": f"request body exceeds {limit} bytes", "field": "body", "limit": limit}
        return 413, body, {}

    def _size(self, headers: dict[str, str]) -> Rejection | None:
        declared = headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.config.max_body_bytes
        ):
            return self._too_large()
        return None

    def _media_type(self, scope: dict[str, Any], headers: dict[str, str]) -> Rejection | None:
        media_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if (
            scope["method"] == "POST"
            and scope["path"].startswith("/v1/")
            # A connector reads its CRM's body itself: Salesforce's SOAP is text/xml.
            and not scope["path"].startswith("/v1/webhooks/")
            and media_type != "application/json"
        ):
            error = f"Content-Type must be application/json, not {media_type!r}"
            return 415, {"error": error, "field": "Content-Type"}, {}
        return None

    def _access(self, scope: dict[str, Any], headers: dict[str, str]) -> Rejection | None:
        needed = required_scope(scope["path"])
        if needed is None:
            return None
        config = self.config
        if not config.auth_required:
            if config.allow_unauthenticated_remote or is_loopback(scope.get("client")):
                return None
            error = (
                "authentication is off, so only local clients are served: configure API "
                "keys (SENTILOOP_API_KEYS_FILE) or set SENTILOOP_ALLOW_UNAUTHENTICATED_REMOTE=true"
            )
            return 403, {"error": error, "field": "Authorization"}, {}
        credentials = [name for name, _ in scope["headers"] if name.lower() in _CREDENTIAL_HEADERS]
        if len(credentials) > 1:
            error = (
                f"send one API key, in one Authorization or X-API-Key header "
                f"(got {len(credentials)} such headers)"
            )
            return 400, {"error": error, "field": "Authorization"}, {}
        try:
            config.keys.authorize(presented_key(headers), needed)
        except AuthError as error:
            if isinstance(error, Forbidden):
                return 403, {"error": str(error), "field": error.field}, {}
            return 401, {"error": str(error), "field": error.field}, {"www-authenticate": "Bearer"}
        return None


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """A streamed body (no Content-Length), or None once it exceeds ``limit``."""
    body = bytearray()
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            return None
    return bytes(body)


def _replaying(body: bytes, receive: Any) -> Any:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
