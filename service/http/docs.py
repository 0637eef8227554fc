"""The OpenAPI UI at ``/docs`` (and ``/``), with no third-party script.

BentoML's page at ``/`` loads Google Tag Manager from googletagmanager.com: a
third-party script in every browser that opens the service, which an offline
or privacy-sensitive deployment must not load, and BentoML 1.4 has no setting
to drop it. This page runs the same Swagger UI from the files BentoML serves
itself (``/static_content``) on BentoML's spec (``/docs.json``), and its
Content-Security-Policy lets the browser load scripts, styles, images and data
from this server only (Swagger UI's online validator badge included, which the
page also turns off). ``DocsPage`` answers these paths before BentoML routes
them.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from starlette.responses import HTMLResponse

DOCS_PATHS = frozenset({"/", "/docs"})

_INIT_SCRIPT = """
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};
"""

PAGE = f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>sentiloop API</title>
    <link rel="stylesheet" type="text/css" href="/static_content/swagger-ui.css">
    <link rel="icon" type="image/png" href="/static_content/favicon-light-32x32.png">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script>{_INIT_SCRIPT}</script>
  </body>
</html>
"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_INIT_SCRIPT.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'self'; script-src 'self' 'sha256-{_SCRIPT_HASH}'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'"
)


class DocsPage:
    """Serves ``PAGE`` at ``DOCS_PATHS`` (GET, HEAD); passes everything else on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and scope["path"] in DOCS_PATHS
        ):
            response = HTMLResponse(
                PAGE, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
