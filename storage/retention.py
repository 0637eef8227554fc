"""Retention of the CRM webhook tables: handled rows deleted once old.

The inbox (``storage.inbox``) keeps every event it stored, and the outbox
(``storage.outbox``) every label it wrote, so without this both grow for ever. The
service runs ``purge_webhook_rows`` in each API worker, at start and then every
``PURGE_INTERVAL_S``:

* rows handled (inbox ``done``; outbox ``done``, i.e. sent, and ``superseded``) go
  ``SENTILOOP_WEBHOOK_RETENTION_DAYS`` after the event arrived. Until then a CRM's
  late retry of the event is still told from a new one and stored once, so the
  retention must outlast the CRMs' retries (Salesforce resends for 24 hours);
* rows given up (inbox ``failed`` and ``unmatched``; outbox ``dead``), which wait
  for an operator to replay them, go ``SENTILOOP_WEBHOOK_DEAD_LETTER_RETENTION_DAYS``
  after the event arrived (longer: the metrics and the alert show them meanwhile);
* pending rows are never deleted, whatever their age.

Rows go in batches of ``batch_size``, each its own short transaction, oldest first,
and at most ``max_batches`` per table and run (the rest at the next run), so that a
first purge of a large backlog never holds the database for long. Workers and
replicas purging at once share the work: on PostgreSQL each skips the rows another
is deleting; on SQLite their batches take turns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from storage import inbox, outbox
from storage.store import utcnow

logger = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600.0
BATCH_SIZE = 500
MAX_BATCHES = 100  # per table and run: 50,000 rows


@dataclass(frozen=True)
class Purged:
    """Rows deleted by one run, per table."""

    inbox: int
    outbox: int


def _in_batches(delete_batch: Callable[[int], int], batch_size: int, max_batches: int) -> int:
    deleted = 0
    for _ in range(max_batches):
        count = delete_batch(batch_size)
        deleted += count
        if count < batch_size:
            break
    return deleted


def purge_webhook_rows(
    sessions: sessionmaker[Session],
    *,
    retention_days: float,
    dead_letter_retention_days: float,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> Purged:
    """Delete the inbox and outbox rows past their retention (module docstring)."""
    now = now or utcnow()
    handled_before = now - timedelta(days=retention_days)
    given_up_before = now - timedelta(days=dead_letter_retention_days)

    def inbox_batch(limit: int) -> int:
        with sessions() as session:
            done = inbox.purge(
                session=session, statuses=[inbox.DONE], received_before=handled_before, limit=limit
            )
            return done + inbox.purge(
                session=session,
                statuses=inbox.GIVEN_UP,
                received_before=given_up_before,
                limit=limit - done,
            )

    def outbox_batch(limit: int) -> int:
        with sessions() as session:
            handled = outbox.purge(
                session=session,
                statuses=[outbox.DONE, outbox.SUPERSEDED],
                created_before=handled_before,
                limit=limit,
            )
            return handled + outbox.purge(
                session=session,
                statuses=[outbox.DEAD],
                created_before=given_up_before,
                limit=limit - handled,
            )

    purged = Purged(
        inbox=_in_batches(inbox_batch, batch_size, max_batches),
        outbox=_in_batches(outbox_batch, batch_size, max_batches),
    )
    if purged.inbox or purged.outbox:
        logger.info(
            "webhook retention: deleted %d inbox and %d outbox rows past their retention",
            purged.inbox,
            purged.outbox,
        )
    return purged
