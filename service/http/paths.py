"""Bounded path labels for BentoML's request metrics.

BentoML's traffic-metrics middleware labels every request with its raw path,
so requests to random paths (``/v1/<uuid>``, scanners) each add a time series
to ``/metrics`` without bound (1,000 such requests grew it from 295 kB to
4.5 MB). That middleware sits outside the service's own middleware, so the
service wraps its whole ASGI app in ``RouteLabelPaths``: it replaces the path
with its route's label (``/v1/templates/{version}``, or ``/{unmatched}`` for a
path no route serves) before BentoML's middleware reads it, and keeps the real
path in the scope; ``restore_path`` (called first thing by the guard, inside
BentoML's middleware) puts it back before routing.
"""

from __future__ import annotations

import re
from typing import Any

ORIGINAL_PATH = "sentiloop.original_path"
UNMATCHED = "/{unmatched}"

# The service's routes: its API methods, the read endpoints under /v1, and
# BentoML's own. tests/e2e check that every path of the OpenAPI spec is here.
ROUTES = frozenset(
    {
        "/v1/predict",
        "/v1/feedback",
        "/v1/feedback/batch",
        "/v1/experiments",
        "/v1/review-queue",
        "/v1/admin/reload-models",
        "/v1/templates",
        "/v1/models",
        "/v1/feedback/export",
        "/v1/openapi.json",
        "/",
        "/docs",
        "/docs.json",
        "/schema.json",
        "/metrics",
        "/livez",
        "/healthz",
        "/readyz",
    }
)
PATTERNS = (
    (re.compile(r"/v1/templates/[^/]+/?"), "/v1/templates/{version}"),
    (re.compile(r"/v1/webhooks/[^/]+/?"), "/v1/webhooks/{connector}"),
    (re.compile(r"/static_content/.+"), "/static_content/{file}"),
    (re.compile(r"/assets/.+"), "/assets/{file}"),
)


def route_label(path: str) -> str:
    """The label of ``path``: itself for a fixed route (a trailing slash dropped),
    its pattern for a parametrised one, ``/{unmatched}`` otherwise."""
    trimmed = path.rstrip("/") or "/"
    if trimmed in ROUTES:
        return trimmed
    for pattern, label in PATTERNS:
        if pattern.fullmatch(path):
            return label
    return UNMATCHED


class RouteLabelPaths:
    """Outermost ASGI wrapper: inner middleware sees route labels as paths until
    ``restore_path`` puts the real one back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            label = route_label(scope["path"])
            if label != scope["path"]:
                scope = {**scope, "path": label, ORIGINAL_PATH: scope["path"]}
        await self.app(scope, receive, send)


def restore_path(scope: dict[str, Any]) -> None:
    original = scope.pop(ORIGINAL_PATH, None)
    if original is not None:
        scope["path"] = original
