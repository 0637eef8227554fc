"""The 400 of a body that fails validation names its field, as every other 4xx does.

BentoML answers a request body that fails its pydantic model with
``{"error": "1 validation error for ...", "detail": [{"loc", "msg", ...}]}``: the
field only inside ``detail``. This middleware adds the first error's field (its
``loc`` joined with dots, ``texts.0``) as the top-level ``field`` and puts its
message into ``error`` (``texts.0: String should have at least 1 character``), so
a client reads every 4xx of the API the same way; an error of the whole body (no
location) names ``body``. It looks only at 400 answers with such a body; every
other response passes through untouched.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


def name_the_field(body: bytes) -> bytes | None:
    """``body`` with ``field`` set and the first error's message in ``error``; None
    when it is not a validation error body without a ``field``."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or "field" in data:
        return None
    detail = data.get("detail")
    if not isinstance(detail, list) or not detail or not isinstance(detail[0], dict):
        return None
    first = detail[0]
    # An error of the body as a whole (both `text` and `texts`, neither, not an
    # object, not JSON) has no location: it names the body.
    field = ".".join(str(part) for part in first.get("loc") or ()) or "body"
    message = first.get("msg")
    if isinstance(message, str) and message:
        message = message.removeprefix("Value error, ")  # pydantic's, for a ValueError
        more = f" (and {len(detail) - 1} more in 'detail')" if len(detail) > 1 else ""
        data["error"] = f"{field}: {message}{more}"
    data["field"] = field
    return json.dumps(data).encode()


class FieldNamingMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def sending(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] == 400:
                held = message  # the body decides what the start says
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            named = name_the_field(body)
            if named is not None:
                body = named
                headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
                held = {**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
            await send(held)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, sending)
