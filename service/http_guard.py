"""ASGI middleware at the HTTP boundary: body size limit, JSON media type, API-key scopes.

Health, readiness, metrics and OpenAPI stay open; every /v1 endpoint needs a key
with its scope when authentication is on (see ``Settings.resolved_auth``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sentiloop.settings import Settings
from service.auth import AuthError, Forbidden, KeyRing, Scope, presented_key

logger = logging.getLogger(__name__)

ASGIApp = Any
Message = dict[str, Any]


def required_scope(path: str) -> Scope | None:
    if path == "/v1/predict":
        return "predict"
    if path == "/v1/feedback":
        return "feedback"
    if path.startswith(("/v1/feedback/export", "/v1/admin/")):
        return "admin"
    if path.startswith("/v1/"):
        return "predict"  # read endpoints: any key that can predict
    return None


@dataclass(frozen=True)
class GuardConfig:
    auth_required: bool
    keys: KeyRing
    max_body_bytes: int

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
            logger.warning("API authentication is DISABLED (local development only)")
        return cls(required, keys, settings.max_body_bytes)


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class GuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._config: GuardConfig | None = None

    @property
    def config(self) -> GuardConfig:
        if self._config is None:  # built on the first request, in the worker
            self._config = GuardConfig.from_settings(Settings())
        return self._config

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config = self.config
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = config.max_body_bytes
        too_large = {
            "error": f"request body exceeds {limit} bytes",
            "field": "body",
            "limit": limit,
        }
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, too_large, {})
            return
        media_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if (
            scope["method"] == "POST"
            and scope["path"].startswith("/v1/")
            and media_type != "application/json"
        ):
            rejection = {
                "error": f"Content-Type must be application/json, not {media_type!r}",
                "field": "Content-Type",
            }
            await _send_json(send, 415, rejection, {})
            return
        needed = required_scope(scope["path"])
        if config.auth_required and needed is not None:
            try:
                config.keys.authorize(presented_key(headers), needed)
            except AuthError as error:
                status = 403 if isinstance(error, Forbidden) else 401
                extra = {} if status == 403 else {"www-authenticate": "Bearer"}
                await _send_json(send, status, {"error": str(error), "field": error.field}, extra)
                return
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await _send_json(send, 413, too_large, {})
                    return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)
