"""Graceful shutdown: drain first, then let the HTTP server stop.

uvicorn, on SIGTERM, closes its listening socket, closes every connection it
sees as idle and waits for the requests it is processing. Under load many
keep-alive connections already hold the client's next request, unread in the
socket's buffer: closing them reset those requests (49 of 64 at concurrency
64 here, all sent before the signal).

So the worker takes SIGTERM first (``Drain.install``) and drains for
``shutdown_drain_s``: ``/readyz`` answers 503 (a load balancer stops sending),
and every response carries ``Connection: close`` (``Drain.wrap``), so clients
finish their requests and leave; requests keep being served. Then it hands the
signal to uvicorn, which stops accepting, finishes what is in flight and runs
the service's shutdown (the prediction log is flushed). A second SIGTERM stops
at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Handler = Callable[[int, Any], Any]


class Drain:
    def __init__(self) -> None:
        self._draining = threading.Event()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def install(self, drain_s: float) -> bool:
        """Take SIGTERM in front of the server's own handler; False where signals
        cannot be handled (not the main thread, no handler to pass on to)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False
        server_handler: Handler = previous

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.draining or drain_s <= 0:
                server_handler(signum, frame)
                return
            self._draining.set()
            logger.info("SIGTERM: draining for %.1fs (readiness 503, Connection: close), "
                        "then stopping", drain_s)  # fmt: skip
            timer = threading.Timer(drain_s, server_handler, args=(signum, frame))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_sigterm)
        return True

    def wrap(self, app: Any) -> Any:
        """``app`` answering with ``Connection: close`` while draining."""

        async def draining_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def closing_send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start" and self.draining:
                    headers = [
                        h for h in message.get("headers", []) if h[0].lower() != b"connection"
                    ]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
                await send(message)

            await app(scope, receive, closing_send)

        return draining_app
