"""The webhook inbox: CRM events kept from their receipt until they are scored.

A delivery is answered once its events are committed here (``add``), so nothing a
CRM was told is accepted can be lost to a crash; the scoring happens after, in the
service's inbox worker, which takes rows with a lease (``claim``) so that workers
and replicas share them without scoring one twice at once, and a row whose worker
died is taken again when its lease ends. Scoring is at least once: a worker that
dies after logging the prediction and before ``mark_done`` leaves the row to be
scored again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import WebhookInbox
from storage.store import utcnow

PENDING, DONE, FAILED = "pending", "done", "failed"
INBOX_TABLE: Table = WebhookInbox.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class InboxEntry:
    """An event as received: the text to score under the CRM's ticket id."""

    connector: str
    event_id: str
    event_type: str
    text: str
    external_id: str
    comment_id: str | None = None
    author: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class InboxItem:
    """A claimed row, to score."""

    id: int
    entry: InboxEntry
    attempts: int


def add(*, session: Session, entries: Sequence[InboxEntry], now: datetime | None = None) -> int:
    """Store the entries not stored yet (by connector and event id); returns how many
    were new. The database tells duplicates (its unique constraint), so two deliveries
    of one event racing each other store it once. The caller commits."""
    now = now or utcnow()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stored = 0
    for entry in entries:
        statement = (
            insert(INBOX_TABLE)
            .values(
                connector=entry.connector,
                event_id=entry.event_id,
                event_type=entry.event_type,
                received_at=now,
                status=PENDING,
                text=entry.text,
                external_id=entry.external_id,
                comment_id=entry.comment_id,
                author=entry.author,
                language=entry.language,
                attempts=0,
            )
            .on_conflict_do_nothing(index_elements=["connector", "event_id"])
            .returning(INBOX_TABLE.c.id)  # nothing returned for a duplicate
        )
        stored += len(session.execute(statement).all())
    return stored


def _claimable(now: datetime) -> ColumnElement[bool]:
    return and_(
        WebhookInbox.status == PENDING,
        or_(WebhookInbox.lease_until.is_(None), WebhookInbox.lease_until < now),
    )


def claim(
    *, session: Session, limit: int, lease_s: float, now: datetime | None = None
) -> list[InboxItem]:
    """Up to ``limit`` pending rows, oldest first, leased to the caller for ``lease_s``
    (committed). A row another worker leased in between is skipped, not waited for."""
    now = now or utcnow()
    candidates = session.scalars(
        select(WebhookInbox.id).where(_claimable(now)).order_by(WebhookInbox.id).limit(limit)
    ).all()
    claimed: list[int] = []
    for row_id in candidates:
        result = session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == row_id, _claimable(now))
            .values(lease_until=now + timedelta(seconds=lease_s))
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(row_id)
    session.commit()
    if not claimed:
        return []
    rows = session.scalars(
        select(WebhookInbox).where(WebhookInbox.id.in_(claimed)).order_by(WebhookInbox.id)
    ).all()
    return [
        InboxItem(
            id=row.id,
            attempts=row.attempts,
            entry=InboxEntry(
                connector=row.connector,
                event_id=row.event_id,
                event_type=row.event_type,
                text=row.text or "",
                external_id=row.external_id,
                comment_id=row.comment_id,
                author=row.author,
                language=row.language,
            ),
        )
        for row in rows
    ]


def mark_done(
    *, session: Session, item_id: int, prediction_id: str, now: datetime | None = None
) -> None:
    """Scored: the prediction's id kept, the text dropped (the prediction log holds it
    as ``SENTILOOP_TEXT_STORAGE`` says). Committed."""
    session.execute(
        update(WebhookInbox)
        .where(WebhookInbox.id == item_id)
        .values(
            status=DONE,
            prediction_id=prediction_id,
            scored_at=now or utcnow(),
            text=None,
            lease_until=None,
        )
    )
    session.commit()


def mark_attempt_failed(
    *,
    session: Session,
    item_id: int,
    error: str,
    retry_in_s: float,
    max_attempts: int,
    now: datetime | None = None,
) -> bool:
    """Count a failed scoring attempt: retried after ``retry_in_s`` (the lease held
    till then), or ``failed`` once ``max_attempts`` were made. Returns whether it was
    given up. Committed."""
    now = now or utcnow()
    attempts = session.scalar(select(WebhookInbox.attempts).where(WebhookInbox.id == item_id))
    made = (attempts or 0) + 1
    given_up = made >= max_attempts
    session.execute(
        update(WebhookInbox)
        .where(WebhookInbox.id == item_id)
        .values(
            attempts=made,
            last_error=error[:2000],
            status=FAILED if given_up else PENDING,
            lease_until=None if given_up else now + timedelta(seconds=retry_in_s),
        )
    )
    session.commit()
    return given_up


def count_by_status(
    *, session: Session, statuses: Sequence[str] = (PENDING, DONE, FAILED)
) -> dict[str, int]:
    """Rows per status (those named; a status without rows is left out). Done rows pile
    up (kept to tell replays): the inbox worker counts only pending and failed ones,
    which the (status, id) index finds without reading the others."""
    rows = session.execute(
        select(WebhookInbox.status, func.count())
        .where(WebhookInbox.status.in_(statuses))
        .group_by(WebhookInbox.status)
    ).all()
    return {status: count for status, count in rows}
