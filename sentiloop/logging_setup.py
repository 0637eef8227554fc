"""Log format for the service and the CLI (standard logging, no prints)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(level: str | None = None) -> None:
    """Attach one stream handler to the project's loggers (idempotent)."""
    chosen = (level or os.environ.get("SENTILOOP_LOG_LEVEL", "INFO")).upper()
    for name in ("sentiloop", "service", "feedback", "training"):
        logger = logging.getLogger(name)
        logger.setLevel(chosen)
        if not any(getattr(h, "_sentiloop", False) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter(_FORMAT))
            handler._sentiloop = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.propagate = False
