"""The inbox worker: webhook events scored after their delivery was answered.

One asyncio task per API worker, on the server's event loop (the batcher's loop),
scores inbox rows through ``SentimentAPI.predict``, the path of ``/v1/predict``:
the same routing, scoring, prediction log (under the ticket's id as
``external_id`` and the connector as ``source``) and metrics. It takes rows with a
lease (``storage.inbox.claim``), so that workers and replicas share them; it is
woken when a delivery stored events and otherwise looks every
``webhook_inbox_poll_interval_s`` (events another worker received, retries due,
rows left by a worker that died). At start it finds whatever a stopped server
left pending. A failed attempt is retried with exponential backoff, and given up
(``failed``, counted) after ``MAX_ATTEMPTS``; a text the API itself refuses is
given up at once. For connectors that write back, the label to write is added to
the outbox (``storage.outbox``) in the transaction that marks the row done, and
the write-back worker (``service.http.writeback``) woken. The task is supervised:
an unexpected error is logged and the loop started again after a pause.

Feedback rows (a CSAT score, an agent's tag: ``connectors.feedback``) are applied
through ``POST /v1/feedback``'s path (``SentimentAPI.record_feedback``: validation,
the comment's storage, metrics) to the ticket's latest prediction, with an
idempotency key made of the connector and the CRM's event id: a row applied again
after a crash is stored once. Feedback whose ticket has no prediction yet waits
while a text of the ticket waits to be scored (they often arrive together: an agent
replies and tags in one update), then is tried ``MATCH_ATTEMPTS`` times (a prediction
may still be in another worker's log queue) and ends ``unmatched``: acknowledged to
the CRM long before, counted, logged, never lost while it could still apply, and
kept to replay (``sentiloop webhooks replay``) as failed rows are.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Collection

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

import storage
from connectors import CONNECTOR_NAMES
from service.http.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
)
from service.metrics import WebhookMetrics
from storage import inbox, outbox

logger = logging.getLogger(__name__)

Predict = Callable[[PredictRequest], Awaitable[PredictResponse]]

CLAIM_BATCH = 32
# Long enough for two model calls at their deadline (model_call_timeout_s <= 25 s).
LEASE_S = 120.0
MAX_ATTEMPTS = 8
FIRST_RETRY_S = 5.0
LONGEST_RETRY_S = 600.0
RESTART_PAUSE_S = 5.0
# Tries of feedback naming a ticket without a prediction (and no text of it waiting).
MATCH_ATTEMPTS = 3
# The inbox rows counted in sentiloop_webhook_inbox{status} (not done: they pile up).
GAUGED = (inbox.PENDING, inbox.FAILED, inbox.UNMATCHED)


def feedback_key(connector: str, event_id: str) -> str:
    """The idempotency key of the feedback a CRM event gives: the same on every try."""
    key = f"webhook:{connector}:{event_id}"
    if len(key) <= 200:  # the column's length
        return key
    return f"webhook:{connector}:sha256:{hashlib.sha256(event_id.encode()).hexdigest()}"


class InboxScorer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        predict: Predict,
        metrics: WebhookMetrics,
        *,
        serving: Callable[[], bool],
        poll_interval_s: float,
        writes_back: Collection[str] = (),
        on_writeback: Callable[[], None] = lambda: None,
        record_feedback: Callable[[FeedbackRequest], FeedbackResponse] | None = None,
    ) -> None:
        """``predict``: ``/v1/predict``'s scoring of a request; ``serving``: whether the
        models serve (rows wait, unclaimed, while they load); ``writes_back``: the
        connectors whose scored events get an outbox row (``on_writeback`` called,
        on the event loop, when one was added)."""
        self._sessions = sessions
        self._predict = predict
        self._metrics = metrics
        self._serving = serving
        self._poll_interval_s = poll_interval_s
        self._writes_back = frozenset(writes_back)
        self._on_writeback = on_writeback
        # /v1/feedback's storing of a request (SentimentAPI.record_feedback), for rows
        # of CRM feedback.
        self._record_feedback = record_feedback
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        for name in CONNECTOR_NAMES:  # export zeros: rates over counters that exist
            for result in ("stored", "unmatched"):
                self._metrics.feedback.labels(name, result)

    def start(self) -> None:
        """Start on the running event loop (the server's)."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="webhook-inbox")

    def wake(self) -> None:
        """New rows wait (called on the event loop)."""
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        """Stop the task. A row being scored keeps its lease: it is scored again once
        the lease ends (by this server started again, or another replica)."""
        if self._task is not None:
            self._task.cancel()

    async def _supervise(self) -> None:
        while True:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the webhook inbox worker failed; starting it again")
                await asyncio.sleep(RESTART_PAUSE_S)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            if await self.drain() == CLAIM_BATCH:
                continue  # more may wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)

    async def drain(self) -> int:
        """Claim and score one batch of rows; returns how many were claimed."""
        if not self._serving():
            return 0
        items = await asyncio.to_thread(self._claim)
        for item in items:
            await self._score(item)
        counts = await asyncio.to_thread(self._counts)
        for status in GAUGED:
            self._metrics.inbox.labels(status).set(counts.get(status, 0))
        return len(items)

    def _claim(self) -> list[inbox.InboxItem]:
        with self._sessions() as session:
            return inbox.claim(session=session, limit=CLAIM_BATCH, lease_s=LEASE_S)

    def _counts(self) -> dict[str, int]:
        with self._sessions() as session:
            return inbox.count_by_status(session=session, statuses=GAUGED)

    async def _score(self, item: inbox.InboxItem) -> None:
        entry = item.entry
        if entry.feedback is not None:
            await self._apply(item)
            return
        try:
            request = PredictRequest.model_validate(
                {
                    "text": entry.text,
                    "external_id": entry.external_id,
                    # Every comment of a ticket on one A/B arm (stored hashed).
                    "routing_key": entry.external_id,
                    "source": entry.connector,
                    "language": entry.language,
                }
            )
        except ValidationError as exc:  # never retried: the same text is refused again
            await self._failed(item, f"refused by /v1/predict: {exc}", give_up=True)
            return
        try:
            response = await self._predict(request)
        except Exception as exc:
            await self._failed(item, f"{type(exc).__name__}: {exc}", give_up=False)
            return
        prediction = response.predictions[0]
        writeback = None
        if entry.connector in self._writes_back:
            writeback = outbox.WriteBack(
                connector=entry.connector,
                event_id=entry.event_id,
                external_id=entry.external_id,
                comment_id=entry.comment_id,
                prediction_id=prediction.prediction_id,
                label=prediction.label,
                confidence=prediction.confidence,
                model_version=prediction.model_version,
                template_version=prediction.template_version,
            )
        await asyncio.to_thread(self._done, item.id, prediction.prediction_id, writeback)
        self._metrics.scored.labels(entry.connector, "scored").inc()
        if writeback is not None:
            self._on_writeback()

    def _done(self, item_id: int, prediction_id: str, writeback: outbox.WriteBack | None) -> None:
        with self._sessions() as session:
            inbox.mark_done(
                session=session,
                item_id=item_id,
                prediction_id=prediction_id,
                writeback=writeback,
            )

    async def _failed(self, item: inbox.InboxItem, error: str, *, give_up: bool) -> None:
        retry_in_s = min(LONGEST_RETRY_S, FIRST_RETRY_S * 2**item.attempts)

        def record() -> bool:
            with self._sessions() as session:
                return inbox.mark_attempt_failed(
                    session=session,
                    item_id=item.id,
                    error=error,
                    retry_in_s=retry_in_s,
                    max_attempts=1 if give_up else MAX_ATTEMPTS,
                )

        given_up = await asyncio.to_thread(record)
        connector = item.entry.connector
        self._metrics.scored.labels(connector, "failed" if given_up else "retry").inc()
        logger.warning(
            "webhook event %s/%s not scored (attempt %d)%s: %s",
            connector,
            item.entry.event_id,
            item.attempts + 1,
            "; given up" if given_up else f"; retried in {retry_in_s:.0f} s",
            error,
        )

    async def _apply(self, item: inbox.InboxItem) -> None:
        """A feedback row applied to its ticket's latest prediction."""
        entry, connector = item.entry, item.entry.connector
        assert entry.feedback is not None
        if self._record_feedback is None:
            await self._feedback_failed(item, "feedback is not taken here", give_up=True)
            return
        try:
            request = FeedbackRequest.model_validate(
                {
                    "external_id": entry.external_id,
                    "source": connector,
                    "label": entry.feedback.label,
                    "comment": f"{entry.event_type}: {entry.feedback.signal}"[:2000],
                    "idempotency_key": feedback_key(connector, entry.event_id),
                }
            )
        except ValidationError as exc:  # never retried: refused again
            await self._feedback_failed(item, f"refused by /v1/feedback: {exc}", give_up=True)
            return
        try:
            result = await asyncio.to_thread(self._record_feedback, request)
        except storage.ExternalIdNotFound as exc:
            await self._not_matched(item, str(exc))
            return
        except storage.StoreUnavailable as exc:
            await self._feedback_failed(item, str(exc), give_up=False)
            return
        except storage.FeedbackError as exc:  # a conflict: the same again is refused again
            await self._feedback_failed(item, f"{type(exc).__name__}: {exc}", give_up=True)
            return
        except Exception as exc:
            await self._feedback_failed(item, f"{type(exc).__name__}: {exc}", give_up=False)
            return

        def applied() -> None:
            with self._sessions() as session:
                inbox.mark_done(
                    session=session, item_id=item.id, prediction_id=result.prediction_id
                )

        await asyncio.to_thread(applied)
        self._metrics.feedback.labels(connector, "replayed" if result.replayed else "stored").inc()

    async def _not_matched(self, item: inbox.InboxItem, error: str) -> None:
        """No prediction of the ticket: wait for its text if one waits to be scored, else
        try again a few times, then give the row up as ``unmatched``."""
        entry = item.entry

        def waiting() -> bool:
            with self._sessions() as session:
                return inbox.scoring_pending(
                    session=session, connector=entry.connector, external_id=entry.external_id
                )

        def defer() -> None:
            with self._sessions() as session:
                inbox.defer(session=session, item_id=item.id, retry_in_s=FIRST_RETRY_S)

        def unmatched() -> None:
            with self._sessions() as session:
                inbox.mark_unmatched(session=session, item_id=item.id, reason=error)

        if await asyncio.to_thread(waiting):
            await asyncio.to_thread(defer)
        elif item.attempts + 1 < MATCH_ATTEMPTS:
            await self._feedback_failed(item, error, give_up=False)
        else:
            await asyncio.to_thread(unmatched)
            self._metrics.feedback.labels(entry.connector, "unmatched").inc()
            logger.warning(
                "feedback %s/%s (%s: %s) not applied: %s",
                entry.connector,
                entry.event_id,
                entry.event_type,
                entry.feedback.signal if entry.feedback else "",
                error,
            )

    async def _feedback_failed(self, item: inbox.InboxItem, error: str, *, give_up: bool) -> None:
        retry_in_s = min(LONGEST_RETRY_S, FIRST_RETRY_S * 2**item.attempts)

        def record() -> bool:
            with self._sessions() as session:
                return inbox.mark_attempt_failed(
                    session=session,
                    item_id=item.id,
                    error=error,
                    retry_in_s=retry_in_s,
                    max_attempts=1 if give_up else MAX_ATTEMPTS,
                )

        given_up = await asyncio.to_thread(record)
        connector = item.entry.connector
        self._metrics.feedback.labels(connector, "failed" if given_up else "retry").inc()
        if given_up:
            logger.warning(
                "feedback %s/%s given up after %d attempt(s): %s",
                connector,
                item.entry.event_id,
                item.attempts + 1,
                error,
            )
