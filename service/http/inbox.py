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
given up at once. The task is supervised: an unexpected error is logged and the
loop started again after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from service.http.schemas import PredictRequest, PredictResponse
from service.metrics import WebhookMetrics
from storage import inbox

logger = logging.getLogger(__name__)

Predict = Callable[[PredictRequest], Awaitable[PredictResponse]]

CLAIM_BATCH = 32
# Long enough for two model calls at their deadline (model_call_timeout_s <= 25 s).
LEASE_S = 120.0
MAX_ATTEMPTS = 8
FIRST_RETRY_S = 5.0
LONGEST_RETRY_S = 600.0
RESTART_PAUSE_S = 5.0


class InboxScorer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        predict: Predict,
        metrics: WebhookMetrics,
        *,
        serving: Callable[[], bool],
        poll_interval_s: float,
    ) -> None:
        """``predict``: ``/v1/predict``'s scoring of a request; ``serving``: whether the
        models serve (rows wait, unclaimed, while they load)."""
        self._sessions = sessions
        self._predict = predict
        self._metrics = metrics
        self._serving = serving
        self._poll_interval_s = poll_interval_s
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

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
        for status in (inbox.PENDING, inbox.FAILED):
            self._metrics.inbox.labels(status).set(counts.get(status, 0))
        return len(items)

    def _claim(self) -> list[inbox.InboxItem]:
        with self._sessions() as session:
            return inbox.claim(session=session, limit=CLAIM_BATCH, lease_s=LEASE_S)

    def _counts(self) -> dict[str, int]:
        with self._sessions() as session:
            return inbox.count_by_status(session=session, statuses=(inbox.PENDING, inbox.FAILED))

    async def _score(self, item: inbox.InboxItem) -> None:
        entry = item.entry
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
        prediction_id = response.predictions[0].prediction_id
        await asyncio.to_thread(self._done, item.id, prediction_id)
        self._metrics.scored.labels(entry.connector, "scored").inc()

    def _done(self, item_id: int, prediction_id: str) -> None:
        with self._sessions() as session:
            inbox.mark_done(session=session, item_id=item_id, prediction_id=prediction_id)

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
