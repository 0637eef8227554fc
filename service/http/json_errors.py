"""Every error of the API is JSON: Starlette's own "Not Found" (an unknown path) and
"Method Not Allowed" (``GET /v1/predict``) were ``text/plain``.

A 404 or 405 answered as plain text becomes ``{"error": ..., "field": ...}`` like
every other 4xx: an unknown path names ``path``, a method the route does not take
names ``method`` (the ``Allow`` header is kept). Every other response passes
through untouched; a JSON 404 (an unknown prediction, template or model) is ours.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


def json_error(status: int, method: str, path: str, allow: str | None) -> bytes:
    """The JSON body of a plain-text 404 or 405 of ``method path``."""
    if status == 404:
        error = {"error": f"no such endpoint: {method} {path}", "field": "path"}
    else:
        allowed = f"; it takes {allow}" if allow else ""
        error = {"error": f"{method} is not allowed on {path}{allowed}", "field": "method"}
    return json.dumps(error).encode()


class JsonErrorsMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced: bytes | None = None

        async def sending(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] in (404, 405):
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if headers.get(b"content-type", b"").startswith(b"text/plain"):
                    allow = headers.get(b"allow")
                    replaced = json_error(
                        message["status"],
                        scope["method"],
                        scope["path"],
                        allow.decode("latin-1") if allow else None,
                    )
                    kept = [
                        (k, v)
                        for k, v in message.get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length")
                    ]
                    message = {
                        **message,
                        "headers": [
                            *kept,
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(replaced)).encode()),
                        ],
                    }
            elif message["type"] == "http.response.body" and replaced is not None:
                if message.get("more_body", False):
                    return  # the plain text's body: dropped
                message = {"type": "http.response.body", "body": replaced}
            await send(message)

        await self.app(scope, receive, sending)
