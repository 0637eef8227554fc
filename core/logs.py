"""Log format for the service and the CLI (standard logging, no prints)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from pydantic import ValidationError

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler[Any]):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


# BentoML logs every failed request here, 400s included, at ERROR with a traceback
# whose validation error carries the input (the text a customer sent).
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


# Errors raised by the project's own validators: their messages quote the value
# ("unknown label 'jane@example.com'"), so only their type is logged.
_VALUE_QUOTING_ERRORS = frozenset({"value_error", "assertion_error"})


def _reason(item: Any) -> str:
    return str(item["type"]) if item["type"] in _VALUE_QUOTING_ERRORS else str(item["msg"])


class ClientErrorFilter(logging.Filter):
    """Turns BentoML's log of a client error (a validation error or a 4xx) into one
    INFO line naming the fields and reasons, without traceback or input values.
    Server errors pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        if isinstance(error, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {_reason(item)}"
                for item in error.errors(include_input=False, include_context=False)
            )
            summary = f"400 validation error ({problems})"
        else:
            status = getattr(getattr(error, "error_code", None), "value", 500)
            if not isinstance(status, int) or status >= 500:
                return True
            summary = f"{status} {type(error).__name__}"
        record.msg = "client error on %s [%s]: %s"
        record.args = (*(record.args or ("?", "?")), summary)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return True


def configure_logging(level: str | None = None) -> None:
    """Attach one stream handler to the project's loggers (idempotent), and keep
    client errors out of BentoML's error log."""
    request_logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in request_logger.filters):
        request_logger.addFilter(ClientErrorFilter())
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
