"""The write-back worker: scored labels sent to the CRM's tickets from the outbox.

One asyncio task per API worker, on the server's event loop (next to the inbox
worker), takes outbox rows with a lease (``storage.outbox.claim``), so that
workers and replicas share them, and sends each row's requests
(``connectors.writeback``) with httpx. It is woken when the inbox worker adds
rows and otherwise sleeps until the next row is due, at most
``webhook_inbox_poll_interval_s`` (rows another worker added, rows left by a
worker that died). At start it finds whatever a stopped server left pending.

Each answer is judged (``judge``): 2xx is sent; 429, 408, 425 and 5xx, a timeout
or a refused connection are retried after an exponential backoff with jitter
(``backoff_s``), or after the ``Retry-After`` of a 429 or 503 (``retry_after_s``);
a 429, or a 503 with ``Retry-After``, also pauses the connector in this worker
until then (its other rows would meet the same answer). Any other answer (400,
401, 403, 404, 422: the same request would get it again) is dead at once; so is
a row after ``writeback_max_attempts``: counted, shown on the dashboard, listed
and replayed by ``sentiloop writeback``. Requests carry credentials: only their method and URL
(without query) appear in messages and logs. The task is supervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from sqlalchemy.orm import Session, sessionmaker

from connectors.writeback import (
    CrmRequest,
    WriteBackError,
    WriteBackTarget,
    build_writebacks,
)
from core.retry_after import retry_after_s
from core.settings import Settings
from service.metrics import WebhookMetrics
from storage import outbox

logger = logging.getLogger(__name__)

CLAIM_BATCH = 16
LONGEST_RETRY_S = 3600.0
RESTART_PAUSE_S = 5.0
SHORTEST_WAIT_S = 0.05
RETRIED_STATUSES = frozenset({408, 425, 429})
RETRY_AFTER_STATUSES = frozenset({429, 503})


def backoff_s(
    attempts: int,
    base_s: float,
    *,
    longest_s: float = LONGEST_RETRY_S,
    rng: Callable[[], float] = random.random,
) -> float:
    """The delay after the ``attempts``-th failed attempt (1, 2, ...): ``base_s``
    doubled per attempt, at most ``longest_s``, with "equal jitter" (half fixed, half
    random) so that rows failed together are not retried together."""
    ceiling = min(longest_s, base_s * 2 ** max(0, attempts - 1))
    return ceiling / 2 + rng() * ceiling / 2


@dataclass(frozen=True)
class Verdict:
    """What became of an attempt: sent, retried after ``retry_in_s``, or dead
    (``retry_in_s`` None); ``pause_s``: how long the CRM asked to be left alone."""

    sent: bool
    status: int | None = None
    error: str = ""
    retry_in_s: float | None = None
    pause_s: float | None = None


def judge(
    response: httpx.Response,
    request: CrmRequest,
    *,
    attempts: int,
    base_s: float,
    now: float,
    rng: Callable[[], float] = random.random,
) -> Verdict:
    """The verdict on one answer, ``attempts`` counting this one."""
    status = response.status_code
    if 200 <= status < 300:
        return Verdict(sent=True, status=status)
    error = f"{request.where}: HTTP {status}: {response.text[:300]}"
    if status in RETRIED_STATUSES or status >= 500:
        asked = (
            retry_after_s(response.headers.get("Retry-After"), now=now)
            if status in RETRY_AFTER_STATUSES
            else None
        )
        if asked is not None:
            delay = min(asked, LONGEST_RETRY_S)
        else:
            delay = backoff_s(attempts, base_s, rng=rng)
        return Verdict(
            sent=False,
            status=status,
            error=error,
            retry_in_s=delay,
            pause_s=delay if status == 429 or asked is not None else None,
        )
    return Verdict(sent=False, status=status, error=error)


class WriteBackSender:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        targets: Mapping[str, WriteBackTarget],
        metrics: WebhookMetrics,
        *,
        poll_interval_s: float,
        max_attempts: int,
        retry_base_s: float,
        timeout_s: float,
    ) -> None:
        self._sessions = sessions
        self._targets = dict(targets)
        self._metrics = metrics
        self._poll_interval_s = poll_interval_s
        self._max_attempts = max_attempts
        self._retry_base_s = retry_base_s
        self._timeout_s = timeout_s
        # Up to three requests per row, each within the timeout, and some slack.
        self._lease_s = 30.0 + 4 * timeout_s
        self._paused_until: dict[str, float] = {}  # connector -> time.monotonic()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        for name in ("generic", "hubspot", "zendesk"):  # export zeros: rates exist
            for result in ("sent", "dead"):
                self._metrics.writebacks.labels(name, result)

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: sessionmaker[Session], metrics: WebhookMetrics
    ) -> WriteBackSender:
        return cls(
            sessions,
            build_writebacks(settings),
            metrics,
            poll_interval_s=settings.webhook_inbox_poll_interval_s,
            max_attempts=settings.writeback_max_attempts,
            retry_base_s=settings.writeback_retry_base_s,
            timeout_s=settings.writeback_timeout_s,
        )

    @property
    def connectors(self) -> frozenset[str]:
        """The connectors that write back (their scored events get an outbox row)."""
        return frozenset(self._targets)

    def start(self) -> None:
        """Start on the running event loop (the server's)."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="writeback")

    def wake(self) -> None:
        """New rows wait (called on the event loop)."""
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        """Stop the task. A row being sent keeps its lease: it is sent again once the
        lease ends (at least once; every write-back is idempotent)."""
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Stop the task and wait until it has ended: its HTTP client has then closed
        its connections on this loop (a loop closed first left their transports to the
        garbage collector, with a ResourceWarning)."""
        self.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self) -> None:
        while True:
            try:
                async with self.client() as client:
                    await self._run(client)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the write-back worker failed; starting it again")
                await asyncio.sleep(RESTART_PAUSE_S)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)

    async def _run(self, client: httpx.AsyncClient) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            if await self.drain(client) == CLAIM_BATCH:
                continue  # more may wait
            wait_s = await asyncio.to_thread(self._seconds_to_next)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    def _active(self) -> list[str]:
        now = time.monotonic()
        return [name for name in self._targets if self._paused_until.get(name, 0.0) <= now]

    def _seconds_to_next(self) -> float:
        """Until the next row is due or a pause ends, at most the poll interval."""
        wait_s = self._poll_interval_s
        now = time.monotonic()
        for until in self._paused_until.values():
            if until > now:
                wait_s = min(wait_s, until - now)
        active = self._active()
        if active:
            with self._sessions() as session:
                due = outbox.next_due(session=session, connectors=active)
            if due is not None:
                wait_s = min(wait_s, (due - datetime.now(UTC)).total_seconds())
        return max(SHORTEST_WAIT_S, wait_s)

    async def drain(self, client: httpx.AsyncClient) -> int:
        """Claim and send one batch of rows (side by side: at most one per ticket);
        returns how many were claimed."""
        active = self._active()
        claimed = await asyncio.to_thread(self._claim, active) if active else outbox.Claimed()
        if claimed.items:
            await asyncio.gather(*(self._send(client, item) for item in claimed.items))
        counts = await asyncio.to_thread(self._counts)
        for status in (outbox.PENDING, outbox.DEAD):
            self._metrics.outbox.labels(status).set(counts.get(status, 0))
        return len(claimed.items) + len(claimed.superseded)

    def _claim(self, connectors: list[str]) -> outbox.Claimed:
        coalesce = [name for name, target in self._targets.items() if target.coalesce]
        with self._sessions() as session:
            claimed = outbox.claim(
                session=session,
                limit=CLAIM_BATCH,
                lease_s=self._lease_s,
                connectors=connectors,
                coalesce=coalesce,
            )
        for item in claimed.superseded:  # counted with the commit, as in _record
            self._metrics.writebacks.labels(item.write.connector, "superseded").inc()
        return claimed

    def _counts(self) -> dict[str, int]:
        with self._sessions() as session:
            return outbox.count_by_status(session=session, statuses=(outbox.PENDING, outbox.DEAD))

    async def _send(self, client: httpx.AsyncClient, item: outbox.OutboxItem) -> None:
        try:
            async with asyncio.timeout(self._lease_s - 10):
                verdict = await self._attempt(client, item)
        except TimeoutError:
            verdict = Verdict(
                sent=False,
                error=f"no answer within {self._lease_s - 10:.0f} s",
                retry_in_s=self._backoff(item),
            )
        await self._record(item, verdict)

    def _backoff(self, item: outbox.OutboxItem) -> float:
        return backoff_s(item.attempts + 1, self._retry_base_s)

    async def _attempt(self, client: httpx.AsyncClient, item: outbox.OutboxItem) -> Verdict:
        target = self._targets[item.write.connector]
        try:
            requests = target.requests(item, now=time.time())
        except WriteBackError as exc:
            return Verdict(sent=False, error=str(exc))
        verdict = Verdict(sent=True)
        for request in requests:
            try:
                response = await client.request(
                    request.method, request.url, content=request.body, headers=request.headers
                )
            except httpx.TransportError as exc:  # refused, reset, timed out
                return Verdict(
                    sent=False,
                    error=f"{request.where}: {type(exc).__name__}",
                    retry_in_s=self._backoff(item),
                )
            verdict = judge(
                response,
                request,
                attempts=item.attempts + 1,
                base_s=self._retry_base_s,
                now=time.time(),
            )
            if not verdict.sent:
                return verdict
        return verdict

    async def _record(self, item: outbox.OutboxItem, verdict: Verdict) -> None:
        connector = item.write.connector
        if verdict.pause_s:
            until = time.monotonic() + verdict.pause_s
            self._paused_until[connector] = max(self._paused_until.get(connector, 0.0), until)

        def record() -> bool:
            # Counted in the same thread right after the commit: a close() that cancels
            # the awaiting task cannot leave a committed result uncounted.
            with self._sessions() as session:
                if verdict.sent:
                    outbox.mark_sent(session=session, item_id=item.id, status_code=verdict.status)
                    dead = False
                else:
                    dead = outbox.mark_attempt_failed(
                        session=session,
                        item_id=item.id,
                        error=verdict.error,
                        status_code=verdict.status,
                        retry_in_s=verdict.retry_in_s,
                        max_attempts=self._max_attempts,
                    )
            result = "sent" if verdict.sent else "dead" if dead else "retry"
            self._metrics.writebacks.labels(connector, result).inc()
            return dead

        dead = await asyncio.to_thread(record)
        if verdict.sent:
            return
        logger.warning(
            "write-back %d of %s ticket %s not sent (attempt %d)%s: %s",
            item.id,
            connector,
            item.write.external_id,
            item.attempts + 1,
            "; dead (sentiloop writeback replay)"
            if dead
            else f"; retried in {verdict.retry_in_s:.1f} s",
            verdict.error,
        )
