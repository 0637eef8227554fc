"""A typed client of the sentiloop API: ``Client`` (sync) and ``AsyncClient``, on httpx.

    from sentiloop.client import Client

    with Client("http://127.0.0.1:3000", api_key="slk_...") as client:
        prediction = client.predict_one("The parcel arrived broken.", external_id="T-981")
        client.feedback(prediction.prediction_id, label="negative")

Answers are the service's own response models (``service.http.responses``: pydantic
and the label set only, so the client imports in a fraction of a second without
torch, BentoML or SQLAlchemy). A 4xx or 5xx answer raises an ``APIError`` subclass
that carries its status, the ``field`` the API named and its message; a connection
that fails raises ``APIConnectionError``.

**Retries.** Connection errors, timeouts, ``429`` and ``503`` are retried with
exponential backoff and full jitter (``RetryPolicy``), waiting at least the
``Retry-After`` the server sent (the service sends it with every ``503``: models still
loading, a full queue, the store unreachable); a ``Retry-After`` longer than
``RetryPolicy.max_wait_s`` is not waited out but raised. A ``503`` or ``429`` means
the request was not carried out, so its retry is always safe. So is a feedback
call's: each gets an ``idempotency_key`` once (unless it brings one) and sends the
same key on every retry, so the server stores it once (a retry of a call the server
did store answers ``replayed=True``). A prediction retried after its connection broke
may have been scored and logged on the first try: the answer's ``prediction_id`` is
the one to send feedback on, the other stays in the log without feedback.

**Helpers.** ``predict_many`` scores any number of texts in requests of 256 (the
API's limit); ``feedback_many`` sends feedback in batches of 1,000 with a result per
item, resending the items a batch answered ``503`` (same keys); ``export_feedback``
iterates over the feedback export, resuming where it stopped when the connection
breaks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict

from core.retry_after import retry_after_s
from sentiloop import __version__
from service.http.responses import (
    MAX_FEEDBACK_BATCH,
    MAX_TEXTS_PER_REQUEST,
    ExportedFeedback,
    FeedbackBatchResponse,
    FeedbackItemResult,
    FeedbackResponse,
    ModelsResponse,
    Prediction,
    PredictResponse,
)

__all__ = [
    "DEFAULT_URL",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ExportedFeedback",
    "FeedbackBatchResponse",
    "FeedbackItem",
    "FeedbackItemResult",
    "FeedbackResponse",
    "ModelsResponse",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Prediction",
    "RateLimited",
    "RetryPolicy",
    "SentiloopError",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
]

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:3000"


# ---------------------------------------------------------------------------- errors


class SentiloopError(Exception):
    """Everything the client raises (besides ``ValueError``/``TypeError`` for calls that
    are wrong before anything is sent)."""


class APIConnectionError(SentiloopError):
    """No answer: the connection failed or broke, retries included (``__cause__`` is
    httpx's error)."""


class APITimeoutError(APIConnectionError):
    """No answer within the timeout, retries included."""


class APIError(SentiloopError):
    """An answer with a 4xx or 5xx status.

    ``status``: the HTTP status; ``field``: the request field the API named (``"label"``,
    ``"texts.3"``, ``"Authorization"``), or None; ``message``: the API's ``error``;
    ``body``: the decoded JSON body (or the text); ``retry_after``: seconds, when the
    answer said when to retry."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
        request: str = "",
    ) -> None:
        self.status = status
        self.message = message
        self.field = field
        self.body = body
        self.retry_after = retry_after
        self.request = request
        named = f" ({field})" if field else ""
        super().__init__(f"{request}: {status}{named}: {message}" if request else message)


class BadRequest(APIError):
    """400: the request is invalid; ``field`` names what is wrong."""


class Unauthorized(APIError):
    """401: no API key, or an unknown one."""


class PermissionDenied(APIError):
    """403: the key lacks the endpoint's scope (or, without keys, a remote client)."""


class NotFound(APIError):
    """404: an unknown prediction, external id, template version or model."""


class Conflict(APIError):
    """409: duplicate feedback, an idempotency key reused with another body, or an
    external id scored from several sources."""


class PayloadTooLarge(APIError):
    """413: the body exceeds the server's ``SENTILOOP_MAX_BODY_BYTES``."""


class UnsupportedMediaType(APIError):
    """415: the body was not sent as JSON."""


class RateLimited(APIError):
    """429: too many requests (from a gateway in front of the service), retries used up."""


class ServerError(APIError):
    """A 5xx answer."""


class ServiceUnavailable(ServerError):
    """503: models loading, a full queue, the store unreachable; retries used up."""


_ERROR_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    503: ServiceUnavailable,
}


def _field_of(body: Mapping[str, Any]) -> str | None:
    """The field an error body names: ``field`` (domain and read-endpoint errors), else
    the ``loc`` of the first validation error (``["texts", 3]`` -> ``"texts.3"``)."""
    if body.get("field"):
        return str(body["field"])
    detail = body.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], Mapping):
        loc = detail[0].get("loc") or []
        return ".".join(str(part) for part in loc) or None
    return None


def _message_of(body: Mapping[str, Any]) -> str:
    message = str(body.get("error") or "")
    detail = body.get("detail")
    if isinstance(detail, list) and detail and isinstance(detail[0], Mapping):
        # pydantic's prefix of a validator's ValueError; the server's `error` drops it.
        first = str(detail[0].get("msg") or "").removeprefix("Value error, ")
        if first and first not in message:
            message = f"{message}: {first}" if message else first
    return message


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error of a 4xx/5xx answer (its body read)."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, Mapping):
        field, message = _field_of(body), _message_of(body)
    else:
        field, message = None, str(body)[:500]
    kind = _ERROR_BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return kind(
        status,
        message or response.reason_phrase,
        field=field,
        body=body,
        retry_after=_retry_after(response),
        request=f"{response.request.method} {response.request.url.path}",
    )


# --------------------------------------------------------------------------- retries


# Errors after which the request may be sent again: no answer came.
_RETRIABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
RETRIABLE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    ``max_retries`` retries after the first try. Without ``Retry-After``, the n-th
    retry waits a random time in ``[0, min(max_backoff_s, backoff_s * 2**n))`` ("full
    jitter": clients that failed together do not come back together). With it, at
    least that long, plus up to ``backoff_s`` of jitter; a ``Retry-After`` over
    ``max_wait_s`` is raised rather than waited out (a caller should not hang for
    minutes unawares)."""

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"retry settings must not be negative: {self}")

    def wait_s(self, retry: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait before retry number ``retry`` (0 for the first), or None
        when there is none left (or the server asked for too long a wait)."""
        if retry >= self.max_retries:
            return None
        if retry_after is not None:
            if retry_after > self.max_wait_s:
                return None
            return retry_after + random.uniform(0, self.backoff_s)
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**retry))


class _Attempts:
    """The tries of one request: after each failure, the seconds to wait before the
    next, or the typed error raised (the sync and async loops share it)."""

    def __init__(self, policy: RetryPolicy, method: str, path: str) -> None:
        self.policy, self.method, self.path = policy, method, path
        self.retry = 0

    def after_error(self, error: httpx.HTTPError) -> float:
        wait = self.policy.wait_s(self.retry)
        if wait is None:
            kind = (
                APITimeoutError if isinstance(error, httpx.TimeoutException) else APIConnectionError
            )
            raise kind(f"{self.method} {self.path}: {type(error).__name__}: {error}") from error
        return self._waiting(wait, type(error).__name__)

    def after_response(self, response: httpx.Response) -> float:
        """After a 4xx/5xx answer (its body read)."""
        wait = None
        if response.status_code in RETRIABLE_STATUSES:
            wait = self.policy.wait_s(self.retry, _retry_after(response))
        if wait is None:
            raise error_from_response(response)
        return self._waiting(wait, str(response.status_code))

    def after_items(self, response: httpx.Response, pending: int) -> float | None:
        """After a batch answer with ``pending`` items to send again (``503``): the
        wait, or None when there are none or the retries ran out."""
        wait = self.policy.wait_s(self.retry, _retry_after(response)) if pending else None
        return None if wait is None else self._waiting(wait, f"{pending} items 503")

    def progressed(self) -> None:
        """The request got further (an export's rows): its retries start again."""
        self.retry = 0

    def _waiting(self, wait: float, why: str) -> float:
        self.retry += 1
        logger.info("%s %s: %s; retry %d in %.2fs", self.method, self.path, why, self.retry, wait)
        return wait


def _retry_after(response: httpx.Response) -> float | None:
    return retry_after_s(response.headers.get("retry-after"))


# -------------------------------------------------------------------- request bodies


class FeedbackItem(BaseModel):
    """One item of ``feedback_many``: the body of ``POST /v1/feedback``. Name the
    prediction by ``prediction_id`` or by ``external_id`` (+ ``source``); give a
    ``label`` (a correction) or a ``verdict``. Without an ``idempotency_key`` the
    client gives it one. (Mappings with these keys are taken too.)"""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prediction_id: str | None = None
    external_id: str | None = None
    label: str | int | None = None
    verdict: Literal["correct", "incorrect"] | None = None
    comment: str | None = None
    source: str | None = None
    idempotency_key: str | None = None


def _new_idempotency_key() -> str:
    return f"sentiloop-client-{uuid.uuid4()}"


def _without_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _feedback_body(item: FeedbackItem | Mapping[str, Any]) -> dict[str, Any]:
    """The item as sent: its own idempotency key, or a new one (kept for its retries)."""
    body = item.model_dump(exclude_none=True) if isinstance(item, FeedbackItem) else dict(item)
    if body.get("idempotency_key") is None:
        body["idempotency_key"] = _new_idempotency_key()
    return body


def _texts_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("predict() takes a list of texts; for one text call predict_one()")
    texts = list(texts)
    if not 1 <= len(texts) <= MAX_TEXTS_PER_REQUEST:
        raise ValueError(
            f"predict() sends 1 to {MAX_TEXTS_PER_REQUEST} texts (the API's limit), got "
            f"{len(texts)}; predict_many() sends any number in chunks"
        )
    return texts


def _predict_chunks(
    texts: Iterable[str],
    chunk_size: int,
    routing_keys: Iterable[str | None] | None,
    external_ids: Iterable[str | None] | None,
) -> Iterator[tuple[list[str], list[str | None] | None, list[str | None] | None]]:
    """(texts, routing_keys, external_ids) per request; the lists go with the texts,
    one per text (a length that differs is a ValueError when the shorter one ends)."""
    if isinstance(texts, str):
        raise TypeError("predict_many() takes an iterable of texts, not one string")
    if not 1 <= chunk_size <= MAX_TEXTS_PER_REQUEST:
        raise ValueError(f"chunk_size must be 1 to {MAX_TEXTS_PER_REQUEST}, got {chunk_size}")
    columns: list[Iterable[Any]] = [texts]
    columns += [column for column in (routing_keys, external_ids) if column is not None]
    rows = zip(*columns, strict=True)
    while chunk := list(itertools.islice(rows, chunk_size)):
        chunk_columns = [list(column) for column in zip(*chunk, strict=True)]
        chunk_texts = chunk_columns.pop(0)
        chunk_keys = chunk_columns.pop(0) if routing_keys is not None else None
        chunk_ids = chunk_columns.pop(0) if external_ids is not None else None
        yield chunk_texts, chunk_keys, chunk_ids


class _FeedbackBatch:
    """One batch of ``feedback_many``: the items to send (at first all, then those
    answered ``503``) and each item's latest result, by its position in ``items``."""

    def __init__(self, bodies: list[dict[str, Any]], offset: int, attempts: _Attempts) -> None:
        self.bodies, self.offset, self.attempts = bodies, offset, attempts
        self.pending = list(range(len(bodies)))
        self.results: list[FeedbackItemResult] = []

    def request(self) -> dict[str, Any]:
        return {"items": [self.bodies[i] for i in self.pending]}

    def take(self, response: httpx.Response) -> float | None:
        """Keep the answer's results; the wait before sending the ``503`` items again,
        or None when done."""
        answered = FeedbackBatchResponse.model_validate_json(response.content).results
        by_position = {result.index: result for result in self.results}
        for position, result in zip(self.pending, answered, strict=True):
            by_position[position] = result.model_copy(update={"index": position})
        self.results = [by_position[position] for position in sorted(by_position)]
        self.pending = [
            i for i, result in zip(self.pending, answered, strict=True) if result.status == 503
        ]
        return self.attempts.after_items(response, len(self.pending))

    def answered(self) -> list[FeedbackItemResult]:
        return [
            result.model_copy(update={"index": self.offset + result.index})
            for result in self.results
        ]


def _batch_result(results: Sequence[FeedbackItemResult]) -> FeedbackBatchResponse:
    return FeedbackBatchResponse(
        results=list(results),
        stored=sum(result.status == 201 for result in results),
        replayed=sum(result.status == 200 for result in results),
        failed=sum(result.status not in (200, 201) for result in results),
    )


def _moment(value: datetime | str | float | None) -> str | None:
    """A bound of the read endpoints: ISO 8601 (a naive datetime is taken as UTC), or
    Unix seconds."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value)


class _ExportCursor:
    """Where an export stopped: the rows come oldest first (by time, then id), so a
    broken export resumes at ``since`` = the last row's time, skipping the rows of that
    time already yielded."""

    def __init__(
        self, since: datetime | str | float | None, until: datetime | str | float | None
    ) -> None:
        self.since, self.until = _moment(since), _moment(until)
        self._at: datetime | None = None
        self._seen_at: set[str] = set()

    def params(self) -> dict[str, str]:
        return _without_none(format="jsonl", since=self.since, until=self.until)

    def take(self, line: str) -> ExportedFeedback | None:
        """The row of a line, or None for a blank line or a row yielded before."""
        if not line.strip():
            return None
        row = ExportedFeedback.model_validate_json(line)
        if row.feedback_created_at == self._at:
            if row.feedback_id in self._seen_at:
                return None
        else:
            self._at, self._seen_at = row.feedback_created_at, set()
        self._seen_at.add(row.feedback_id)
        self.since = row.feedback_created_at.isoformat()
        return row


# ---------------------------------------------------------------------------- shared

EXPORT_PATH = "/v1/feedback/export"


class _BaseClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout_s: float | httpx.Timeout,
        retry: RetryPolicy | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry if retry is not None else RetryPolicy()
        self._timeout = (
            timeout_s if isinstance(timeout_s, httpx.Timeout) else httpx.Timeout(timeout_s)
        )
        self._headers = {"User-Agent": f"sentiloop-client/{__version__}"}
        if api_key:
            # The scheme the server takes first (service.http.auth.presented_key).
            self._headers["Authorization"] = f"Bearer {api_key}"

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _attempts(self, method: str, path: str) -> _Attempts:
        return _Attempts(self.retry, method, path)

    @staticmethod
    def _predictions(response: httpx.Response) -> list[Prediction]:
        return PredictResponse.model_validate_json(response.content).predictions

    @staticmethod
    def _feedback_batches(
        items: Iterable[FeedbackItem | Mapping[str, Any]], batch_size: int
    ) -> Iterator[list[dict[str, Any]]]:
        if not 1 <= batch_size <= MAX_FEEDBACK_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_FEEDBACK_BATCH}, got {batch_size}")
        bodies = iter(items)
        while batch := [_feedback_body(item) for item in itertools.islice(bodies, batch_size)]:
            yield batch


# ------------------------------------------------------------------------------ sync


class Client(_BaseClient):
    """The sentiloop API, synchronously (one connection pool; use it as a context
    manager or call ``close()``).

    ``api_key``: sent as ``Authorization: Bearer`` (needed when the server has
    authentication on; see README, Security). ``timeout_s``: per request (a float, or an
    ``httpx.Timeout``); 60 s by default, the server's own limit. ``retry``: see
    ``RetryPolicy``; ``RetryPolicy(max_retries=0)`` sends each request once.
    ``transport``: an httpx transport (e.g. ``httpx.MockTransport`` in tests)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float | httpx.Timeout = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout_s=timeout_s, retry=retry)
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=self._timeout,
            headers=self._headers,
            transport=transport,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A 2xx answer, after retries; else the typed error."""
        attempts = self._attempts(method, path)
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except _RETRIABLE_ERRORS as error:
                wait = attempts.after_error(error)
            else:
                if response.is_success:
                    return response
                wait = attempts.after_response(response)
            time.sleep(wait)

    # -- scoring

    def predict(
        self,
        texts: Sequence[str],
        *,
        template_version: str | None = None,
        routing_key: str | None = None,
        routing_keys: Sequence[str | None] | None = None,
        external_ids: Sequence[str | None] | None = None,
        language: str | None = None,
        source: str | None = None,
    ) -> list[Prediction]:
        """Score up to 256 texts in one request, in order (``predict_many`` for more).

        ``routing_key``: one A/B key for them all; ``routing_keys``/``external_ids``:
        one per text (None for none); ``language``: an ISO 639-1 code for all of them
        (detected per text otherwise); ``source``: the system they come from."""
        body = _without_none(
            texts=_texts_list(texts),
            template_version=template_version,
            routing_key=routing_key,
            routing_keys=list(routing_keys) if routing_keys is not None else None,
            external_ids=list(external_ids) if external_ids is not None else None,
            language=language,
            source=source,
        )
        return self._predictions(self._send("POST", "/v1/predict", json=body))

    def predict_one(
        self,
        text: str,
        *,
        external_id: str | None = None,
        template_version: str | None = None,
        routing_key: str | None = None,
        language: str | None = None,
        source: str | None = None,
    ) -> Prediction:
        """Score one text (``external_id``: your id of it, for feedback by that id)."""
        body = _without_none(
            text=text,
            external_id=external_id,
            template_version=template_version,
            routing_key=routing_key,
            language=language,
            source=source,
        )
        return self._predictions(self._send("POST", "/v1/predict", json=body))[0]

    def predict_many(
        self,
        texts: Iterable[str],
        *,
        chunk_size: int = MAX_TEXTS_PER_REQUEST,
        template_version: str | None = None,
        routing_key: str | None = None,
        routing_keys: Iterable[str | None] | None = None,
        external_ids: Iterable[str | None] | None = None,
        language: str | None = None,
        source: str | None = None,
    ) -> Iterator[Prediction]:
        """Score any number of texts, ``chunk_size`` (at most 256) per request, one
        request at a time; predictions come in the texts' order, as each chunk is
        answered (the texts, and the per-text lists, are read as needed)."""
        for chunk, keys, ids in _predict_chunks(texts, chunk_size, routing_keys, external_ids):
            yield from self.predict(
                chunk,
                template_version=template_version,
                routing_key=routing_key,
                routing_keys=keys,
                external_ids=ids,
                language=language,
                source=source,
            )

    # -- feedback

    def feedback(
        self,
        prediction_id: str | None = None,
        *,
        external_id: str | None = None,
        label: str | int | None = None,
        verdict: Literal["correct", "incorrect"] | None = None,
        comment: str | None = None,
        source: str | None = None,
        idempotency_key: str | None = None,
    ) -> FeedbackResponse:
        """Store a correction (``label``) or a ``verdict`` on a prediction, named by its
        ``prediction_id`` or by your ``external_id`` (+ ``source``). Without an
        ``idempotency_key`` one is made for this call and reused by its retries."""
        body = _feedback_body(
            FeedbackItem(
                prediction_id=prediction_id,
                external_id=external_id,
                label=label,
                verdict=verdict,
                comment=comment,
                source=source,
                idempotency_key=idempotency_key,
            )
        )
        response = self._send("POST", "/v1/feedback", json=body)
        return FeedbackResponse.model_validate_json(response.content)

    def feedback_many(
        self,
        items: Iterable[FeedbackItem | Mapping[str, Any]],
        *,
        batch_size: int = MAX_FEEDBACK_BATCH,
    ) -> FeedbackBatchResponse:
        """Send feedback in batches of ``batch_size`` (at most 1,000): one result per
        item, ``index`` its position in ``items``, with the counts over all of them.
        Each item is stored on its own (a bad one fails alone: status 400 and the
        ``field``); items a batch answered ``503`` are resent with their keys, as a 503
        answer would be, and keep their ``503`` when the retries run out."""
        results: list[FeedbackItemResult] = []
        for bodies in self._feedback_batches(items, batch_size):
            path = "/v1/feedback/batch"
            batch = _FeedbackBatch(bodies, len(results), self._attempts("POST", path))
            while (wait := batch.take(self._send("POST", path, json=batch.request()))) is not None:
                time.sleep(wait)
            results += batch.answered()
        return _batch_result(results)

    # -- reading

    def export_feedback(
        self,
        *,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
    ) -> Iterator[ExportedFeedback]:
        """Feedback joined with its predictions, oldest first, in ``[since, until)``
        (datetimes, ISO 8601 strings or Unix seconds; admin key), read as it streams.
        A connection that breaks part-way is opened again from the last row's time
        (rows already yielded are skipped), within the retry policy (counted per break)."""
        cursor = _ExportCursor(since, until)
        attempts = self._attempts("GET", EXPORT_PATH)
        while True:
            try:
                with self._http.stream("GET", EXPORT_PATH, params=cursor.params()) as response:
                    if response.is_success:
                        for line in response.iter_lines():
                            if (row := cursor.take(line)) is not None:
                                attempts.progressed()
                                yield row
                        return
                    response.read()
                    wait = attempts.after_response(response)
            except _RETRIABLE_ERRORS as error:
                wait = attempts.after_error(error)
            time.sleep(wait)

    def models(self) -> ModelsResponse:
        """The models serving now, with their store metadata, and the traffic split."""
        return ModelsResponse.model_validate_json(self._send("GET", "/v1/models").content)

    def reload_models(self) -> ModelsResponse:
        """Switch this worker to a newly promoted model now (admin key)."""
        response = self._send("POST", "/v1/admin/reload-models", json={})
        return ModelsResponse.model_validate_json(response.content)

    def templates(self) -> dict[str, Any]:
        """The released template versions and the traffic split."""
        return dict(self._send("GET", "/v1/templates").json())

    def experiments(
        self,
        *,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
        control: str | None = None,
    ) -> dict[str, Any]:
        """The A/B report (README, A/B traffic split)."""
        params = _without_none(since=_moment(since), until=_moment(until), control=control)
        return dict(self._send("GET", "/v1/experiments", params=params).json())

    def review_queue(
        self,
        *,
        limit: int = 50,
        model_version: str | None = None,
        language: str | None = None,
        days: float | None = None,
        exploration: float | None = None,
    ) -> list[dict[str, Any]]:
        """The predictions that most need a human label (admin key)."""
        params = _without_none(
            limit=limit,
            model_version=model_version,
            language=language,
            days=days,
            exploration=exploration,
        )
        return list(self._send("GET", "/v1/review-queue", params=params).json()["items"])

    def ready(self) -> bool:
        """Whether the server serves (``/readyz`` answers 200); sent once, no retries."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False


# ----------------------------------------------------------------------------- async


class AsyncClient(_BaseClient):
    """``Client``'s calls, awaited (``async with AsyncClient(...) as client``); the
    iterators are async iterators."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float | httpx.Timeout = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout_s=timeout_s, retry=retry)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self._timeout,
            headers=self._headers,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = self._attempts(method, path)
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except _RETRIABLE_ERRORS as error:
                wait = attempts.after_error(error)
            else:
                if response.is_success:
                    return response
                wait = attempts.after_response(response)
            await asyncio.sleep(wait)

    async def predict(
        self,
        texts: Sequence[str],
        *,
        template_version: str | None = None,
        routing_key: str | None = None,
        routing_keys: Sequence[str | None] | None = None,
        external_ids: Sequence[str | None] | None = None,
        language: str | None = None,
        source: str | None = None,
    ) -> list[Prediction]:
        """See ``Client.predict``."""
        body = _without_none(
            texts=_texts_list(texts),
            template_version=template_version,
            routing_key=routing_key,
            routing_keys=list(routing_keys) if routing_keys is not None else None,
            external_ids=list(external_ids) if external_ids is not None else None,
            language=language,
            source=source,
        )
        return self._predictions(await self._send("POST", "/v1/predict", json=body))

    async def predict_one(
        self,
        text: str,
        *,
        external_id: str | None = None,
        template_version: str | None = None,
        routing_key: str | None = None,
        language: str | None = None,
        source: str | None = None,
    ) -> Prediction:
        """See ``Client.predict_one``."""
        body = _without_none(
            text=text,
            external_id=external_id,
            template_version=template_version,
            routing_key=routing_key,
            language=language,
            source=source,
        )
        return self._predictions(await self._send("POST", "/v1/predict", json=body))[0]

    async def predict_many(
        self,
        texts: Iterable[str],
        *,
        chunk_size: int = MAX_TEXTS_PER_REQUEST,
        template_version: str | None = None,
        routing_key: str | None = None,
        routing_keys: Iterable[str | None] | None = None,
        external_ids: Iterable[str | None] | None = None,
        language: str | None = None,
        source: str | None = None,
    ) -> AsyncIterator[Prediction]:
        """See ``Client.predict_many`` (``async for``)."""
        for chunk, keys, ids in _predict_chunks(texts, chunk_size, routing_keys, external_ids):
            predictions = await self.predict(
                chunk,
                template_version=template_version,
                routing_key=routing_key,
                routing_keys=keys,
                external_ids=ids,
                language=language,
                source=source,
            )
            for prediction in predictions:
                yield prediction

    async def feedback(
        self,
        prediction_id: str | None = None,
        *,
        external_id: str | None = None,
        label: str | int | None = None,
        verdict: Literal["correct", "incorrect"] | None = None,
        comment: str | None = None,
        source: str | None = None,
        idempotency_key: str | None = None,
    ) -> FeedbackResponse:
        """See ``Client.feedback``."""
        body = _feedback_body(
            FeedbackItem(
                prediction_id=prediction_id,
                external_id=external_id,
                label=label,
                verdict=verdict,
                comment=comment,
                source=source,
                idempotency_key=idempotency_key,
            )
        )
        response = await self._send("POST", "/v1/feedback", json=body)
        return FeedbackResponse.model_validate_json(response.content)

    async def feedback_many(
        self,
        items: Iterable[FeedbackItem | Mapping[str, Any]],
        *,
        batch_size: int = MAX_FEEDBACK_BATCH,
    ) -> FeedbackBatchResponse:
        """See ``Client.feedback_many``."""
        results: list[FeedbackItemResult] = []
        for bodies in self._feedback_batches(items, batch_size):
            path = "/v1/feedback/batch"
            batch = _FeedbackBatch(bodies, len(results), self._attempts("POST", path))
            while (
                wait := batch.take(await self._send("POST", path, json=batch.request()))
            ) is not None:
                await asyncio.sleep(wait)
            results += batch.answered()
        return _batch_result(results)

    async def export_feedback(
        self,
        *,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
    ) -> AsyncIterator[ExportedFeedback]:
        """See ``Client.export_feedback`` (``async for``)."""
        cursor = _ExportCursor(since, until)
        attempts = self._attempts("GET", EXPORT_PATH)
        while True:
            try:
                async with self._http.stream(
                    "GET", EXPORT_PATH, params=cursor.params()
                ) as response:
                    if response.is_success:
                        async for line in response.aiter_lines():
                            if (row := cursor.take(line)) is not None:
                                attempts.progressed()
                                yield row
                        return
                    await response.aread()
                    wait = attempts.after_response(response)
            except _RETRIABLE_ERRORS as error:
                wait = attempts.after_error(error)
            await asyncio.sleep(wait)

    async def models(self) -> ModelsResponse:
        """See ``Client.models``."""
        response = await self._send("GET", "/v1/models")
        return ModelsResponse.model_validate_json(response.content)

    async def reload_models(self) -> ModelsResponse:
        """See ``Client.reload_models``."""
        response = await self._send("POST", "/v1/admin/reload-models", json={})
        return ModelsResponse.model_validate_json(response.content)

    async def templates(self) -> dict[str, Any]:
        """See ``Client.templates``."""
        return dict((await self._send("GET", "/v1/templates")).json())

    async def experiments(
        self,
        *,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
        control: str | None = None,
    ) -> dict[str, Any]:
        """See ``Client.experiments``."""
        params = _without_none(since=_moment(since), until=_moment(until), control=control)
        return dict((await self._send("GET", "/v1/experiments", params=params)).json())

    async def review_queue(
        self,
        *,
        limit: int = 50,
        model_version: str | None = None,
        language: str | None = None,
        days: float | None = None,
        exploration: float | None = None,
    ) -> list[dict[str, Any]]:
        """See ``Client.review_queue``."""
        params = _without_none(
            limit=limit,
            model_version=model_version,
            language=language,
            days=days,
            exploration=exploration,
        )
        response = await self._send("GET", "/v1/review-queue", params=params)
        return list(response.json()["items"])

    async def ready(self) -> bool:
        """See ``Client.ready``."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False
