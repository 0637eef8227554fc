"""Maps domain errors to HTTP responses at the boundary."""

from __future__ import annotations

import logging
from http import HTTPStatus

from starlette.responses import JSONResponse

import storage
from feedback.experiments import ExperimentError
from model.model_store import ModelNotFound
from model.templates import UnknownTemplateVersion
from service.inference.batching import Overloaded
from service.inference.scoring import ModelUnavailable

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[Exception], HTTPStatus], ...] = (
    (storage.InvalidTimeRange, HTTPStatus.BAD_REQUEST),
    (ExperimentError, HTTPStatus.BAD_REQUEST),
    (UnknownTemplateVersion, HTTPStatus.NOT_FOUND),
    (storage.PredictionNotFound, HTTPStatus.NOT_FOUND),
    (storage.ExternalIdNotFound, HTTPStatus.NOT_FOUND),
    (storage.AmbiguousExternalId, HTTPStatus.CONFLICT),
    (ModelNotFound, HTTPStatus.NOT_FOUND),
    (storage.IdempotencyConflict, HTTPStatus.CONFLICT),
    (storage.DuplicateFeedback, HTTPStatus.CONFLICT),
    (storage.StoreUnavailable, HTTPStatus.SERVICE_UNAVAILABLE),
    (Overloaded, HTTPStatus.SERVICE_UNAVAILABLE),
    (ModelUnavailable, HTTPStatus.SERVICE_UNAVAILABLE),
)

DOMAIN_ERRORS = tuple(error for error, _ in STATUS_BY_ERROR)
# Seconds a client waits before retrying a 503 (or a batch answer with 503 items).
RETRY_AFTER_S = "5"


def status_of(error: Exception) -> HTTPStatus:
    return next(code for kind, code in STATUS_BY_ERROR if isinstance(error, kind))


def error_response(error: Exception) -> JSONResponse:
    """The JSON error body ``{"error", "field"}`` with the error's status code."""
    status = status_of(error)
    if status >= 500:
        logger.error("%s: %s", type(error).__name__, error)
    body: dict[str, object] = {"error": str(error), "field": getattr(error, "field", None)}
    if isinstance(error, UnknownTemplateVersion):
        body["known_versions"] = error.known
    headers = {"Retry-After": RETRY_AFTER_S} if status == HTTPStatus.SERVICE_UNAVAILABLE else None
    return JSONResponse(body, status_code=status, headers=headers)
