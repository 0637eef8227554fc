"""The write-back outbox: labels to write to the CRM's ticket, kept until sent.

A row is added (``add``) in the transaction that marks its inbox event scored
(``storage.inbox.mark_done``), so a server stopped between scoring an event and
writing its label back sends it when it starts again. The service's write-back
worker takes rows with a lease (``claim``), as the inbox worker does, so that
workers and replicas share them; a row whose worker died is taken again when its
lease ends, and sending is at least once (every write is idempotent: a tag added,
a property set, a callback with the same ``webhook-id``).

A ticket's rows are sent in order, one at a time: a row waits while an older row
of its ticket is pending (in flight, or waiting for its retry). For connectors
whose write-back is a state (a tag, a property: ``coalesce``), a row with a newer
row of its ticket pending or sent is ``superseded`` instead of sent, so a backlog
sends each ticket's newest label once and a replayed old row never overwrites a
newer label. Failed attempts are retried after the delay the caller gives, and
``dead`` after ``max_attempts``; ``replay`` makes dead rows pending again. Rows
sent, superseded or dead are deleted after the retention (``purge``).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from storage.models import WriteBackOutbox
from storage.store import utcnow

PENDING, DONE, DEAD, SUPERSEDED = "pending", "done", "dead", "superseded"
STATUSES = (PENDING, DONE, DEAD, SUPERSEDED)
OUTBOX_TABLE: Table = WriteBackOutbox.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class WriteBack:
    """A label to write to a ticket: the scored event, the prediction."""

    connector: str
    event_id: str
    external_id: str
    prediction_id: str
    label: str
    confidence: float
    model_version: str
    template_version: str
    comment_id: str | None = None


@dataclass(frozen=True)
class OutboxItem:
    """A claimed row, to send. ``message_id``: the idempotency key of every attempt."""

    id: int
    write: WriteBack
    message_id: str
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class OutboxRow:
    """A row as ``sentiloop writeback list`` shows it."""

    id: int
    connector: str
    external_id: str
    label: str
    status: str
    attempts: int
    created_at: datetime
    last_status: int | None
    last_error: str | None
    sent_at: datetime | None
    next_attempt_at: datetime | None


@dataclass
class Claimed:
    """What ``claim`` took: rows to send, and rows superseded by a newer label."""

    items: list[OutboxItem] = field(default_factory=list)
    superseded: list[OutboxItem] = field(default_factory=list)


def add(*, session: Session, write: WriteBack, now: datetime | None = None) -> bool:
    """Add the write-back unless its event has one already (an event scored twice);
    returns whether it was added. The caller commits."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(OUTBOX_TABLE)
        .values(
            connector=write.connector,
            event_id=write.event_id,
            external_id=write.external_id,
            comment_id=write.comment_id,
            message_id=f"msg_{uuid.uuid4().hex}",
            prediction_id=write.prediction_id,
            label=write.label,
            confidence=write.confidence,
            model_version=write.model_version[:200],
            template_version=write.template_version[:64],
            created_at=now or utcnow(),
            status=PENDING,
            attempts=0,
        )
        .on_conflict_do_nothing(index_elements=["connector", "event_id"])
        .returning(OUTBOX_TABLE.c.id)
    )
    return len(session.execute(statement).all()) == 1


def _next_of_ticket(connectors: Collection[str]) -> ColumnElement[bool]:
    """Pending, of a connector being sent, and the oldest pending row of its ticket."""
    older = aliased(WriteBackOutbox)
    return and_(
        WriteBackOutbox.status == PENDING,
        WriteBackOutbox.connector.in_(list(connectors)),
        ~exists().where(
            older.connector == WriteBackOutbox.connector,
            older.external_id == WriteBackOutbox.external_id,
            older.status == PENDING,
            older.id < WriteBackOutbox.id,
        ),
    )


def _claimable(now: datetime, connectors: Collection[str]) -> ColumnElement[bool]:
    """The next row of its ticket, and due (no lease, or its lease ended)."""
    return and_(
        _next_of_ticket(connectors),
        or_(WriteBackOutbox.lease_until.is_(None), WriteBackOutbox.lease_until < now),
    )


def _item(row: WriteBackOutbox) -> OutboxItem:
    return OutboxItem(
        id=row.id,
        message_id=row.message_id,
        attempts=row.attempts,
        created_at=row.created_at,
        write=WriteBack(
            connector=row.connector,
            event_id=row.event_id,
            external_id=row.external_id,
            comment_id=row.comment_id,
            prediction_id=row.prediction_id,
            label=row.label,
            confidence=row.confidence,
            model_version=row.model_version,
            template_version=row.template_version,
        ),
    )


def claim(
    *,
    session: Session,
    limit: int,
    lease_s: float,
    connectors: Collection[str],
    coalesce: Collection[str] = (),
    now: datetime | None = None,
) -> Claimed:
    """Up to ``limit`` rows of ``connectors`` due to be sent, oldest first, at most one
    per ticket, leased to the caller for ``lease_s`` (committed). A row another
    worker took in between is skipped, not waited for. Rows of ``coalesce``
    connectors with a newer row of their ticket pending or sent are marked
    ``superseded`` rather than returned to send."""
    now = now or utcnow()
    claimed = Claimed()
    if not connectors or limit <= 0:
        return claimed
    candidates = session.scalars(
        select(WriteBackOutbox.id)
        .where(_claimable(now, connectors))
        .order_by(WriteBackOutbox.id)
        .limit(limit)
    ).all()
    taken: list[int] = []
    for row_id in candidates:
        result = session.execute(
            update(WriteBackOutbox)
            .where(WriteBackOutbox.id == row_id, _claimable(now, connectors))
            .values(lease_until=now + timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            taken.append(row_id)
    if taken:
        rows = session.scalars(
            select(WriteBackOutbox)
            .where(WriteBackOutbox.id.in_(taken))
            .order_by(WriteBackOutbox.id)
        ).all()
        newer = aliased(WriteBackOutbox)
        for row in rows:
            item = _item(row)
            replaced = row.connector in coalesce and session.scalar(
                select(
                    exists().where(
                        newer.connector == row.connector,
                        newer.external_id == row.external_id,
                        newer.status.in_((PENDING, DONE)),
                        newer.id > row.id,
                    )
                )
            )
            if replaced:
                session.execute(
                    update(WriteBackOutbox)
                    .where(WriteBackOutbox.id == row.id)
                    .values(status=SUPERSEDED, lease_until=None)
                    .execution_options(synchronize_session=False)
                )
                claimed.superseded.append(item)
            else:
                claimed.items.append(item)
    session.commit()
    return claimed


def mark_sent(
    *, session: Session, item_id: int, status_code: int | None, now: datetime | None = None
) -> None:
    """Written to the CRM (its answer's status kept). Committed."""
    session.execute(
        update(WriteBackOutbox)
        .where(WriteBackOutbox.id == item_id)
        .values(
            status=DONE,
            attempts=WriteBackOutbox.attempts + 1,
            last_status=status_code,
            last_error=None,  # sent: an earlier attempt's error no longer describes it
            sent_at=now or utcnow(),
            lease_until=None,
        )
    )
    session.commit()


def mark_attempt_failed(
    *,
    session: Session,
    item_id: int,
    error: str,
    status_code: int | None,
    retry_in_s: float | None,
    max_attempts: int,
    now: datetime | None = None,
) -> bool:
    """Count a failed attempt: retried after ``retry_in_s`` (the lease held till then),
    or ``dead`` once ``max_attempts`` were made, or at once when ``retry_in_s`` is
    None (an answer that the same request would get again: 400, 401, 404...).
    Returns whether it is dead. Committed."""
    now = now or utcnow()
    attempts = session.scalar(select(WriteBackOutbox.attempts).where(WriteBackOutbox.id == item_id))
    made = (attempts or 0) + 1
    dead = retry_in_s is None or made >= max_attempts
    session.execute(
        update(WriteBackOutbox)
        .where(WriteBackOutbox.id == item_id)
        .values(
            attempts=made,
            last_error=error[:2000],
            last_status=status_code,
            status=DEAD if dead else PENDING,
            lease_until=None if dead or retry_in_s is None else now + timedelta(seconds=retry_in_s),
        )
    )
    session.commit()
    return dead


def next_due(
    *, session: Session, connectors: Collection[str], now: datetime | None = None
) -> datetime | None:
    """When the next row of ``connectors`` is due (``now`` or earlier: at once); None
    when none is pending. Rows waiting behind an older row of their ticket are not
    due before it."""
    if not connectors:
        return None
    now = now or utcnow()
    due = session.execute(
        select(
            func.count().filter(WriteBackOutbox.lease_until.is_(None)),
            func.min(WriteBackOutbox.lease_until),
        ).where(_next_of_ticket(connectors))
    ).one()
    unleased, earliest = due
    if unleased:
        return now
    if earliest is None:
        return None
    if earliest.tzinfo is None:  # SQLite returns naive UTC from an aggregate
        earliest = earliest.replace(tzinfo=now.tzinfo)
    return earliest


def list_rows(
    *,
    session: Session,
    status: str | None = None,
    connector: str | None = None,
    limit: int = 50,
) -> list[OutboxRow]:
    """The newest rows first, of one status and connector when named."""
    query = select(WriteBackOutbox).order_by(WriteBackOutbox.id.desc()).limit(limit)
    if status is not None:
        query = query.where(WriteBackOutbox.status == status)
    if connector is not None:
        query = query.where(WriteBackOutbox.connector == connector)
    return [
        OutboxRow(
            id=row.id,
            connector=row.connector,
            external_id=row.external_id,
            label=row.label,
            status=row.status,
            attempts=row.attempts,
            created_at=row.created_at,
            last_status=row.last_status,
            last_error=row.last_error,
            sent_at=row.sent_at,
            next_attempt_at=row.lease_until if row.status == PENDING else None,
        )
        for row in session.scalars(query).all()
    ]


def replay(
    *,
    session: Session,
    ids: Sequence[int] | None = None,
    connector: str | None = None,
) -> list[int]:
    """Make dead rows pending again with a fresh count of attempts: those of ``ids``,
    or every dead row (of ``connector`` when named) when ``ids`` is None. Returns the
    ids made pending (a row that is not dead is left as it is). Committed."""
    statement = update(WriteBackOutbox).where(WriteBackOutbox.status == DEAD)
    if ids is not None:
        statement = statement.where(WriteBackOutbox.id.in_(list(ids)))
    if connector is not None:
        statement = statement.where(WriteBackOutbox.connector == connector)
    chosen = sorted(
        session.scalars(
            statement.values(status=PENDING, attempts=0, lease_until=None)
            .returning(WriteBackOutbox.id)
            .execution_options(synchronize_session=False)
        ).all()
    )
    session.commit()
    return chosen


def count_by_status(*, session: Session, statuses: Sequence[str] = STATUSES) -> dict[str, int]:
    """Rows per status (those named; a status without rows is left out)."""
    rows = session.execute(
        select(WriteBackOutbox.status, func.count())
        .where(WriteBackOutbox.status.in_(statuses))
        .group_by(WriteBackOutbox.status)
    ).all()
    return {status: count for status, count in rows}


def _purgeable(status: str) -> ColumnElement[bool]:
    """Rows of ``status`` that may go once old: a sent row stays while an older row of
    its ticket is dead or pending, as it is what supersedes that older label if it is
    replayed (``claim``)."""
    if status != DONE:
        return WriteBackOutbox.status == status
    older = aliased(WriteBackOutbox)
    return and_(
        WriteBackOutbox.status == DONE,
        ~exists().where(
            older.connector == WriteBackOutbox.connector,
            older.external_id == WriteBackOutbox.external_id,
            older.status.in_((PENDING, DEAD)),
            older.id < WriteBackOutbox.id,
        ),
    )


def purge(
    *, session: Session, statuses: Sequence[str], created_before: datetime, limit: int
) -> int:
    """Delete up to ``limit`` rows of ``statuses`` added before ``created_before``,
    oldest first; returns how many (committed). Pending rows are never deleted, nor
    a sent row that an older dead or pending row of its ticket still needs. On
    PostgreSQL, rows another worker is deleting at the same time are skipped, not
    waited for."""
    deleted = 0
    for status in statuses:
        if status == PENDING or deleted >= limit:
            continue
        ids = session.scalars(
            select(WriteBackOutbox.id)
            .where(_purgeable(status), WriteBackOutbox.created_at < created_before)
            .order_by(WriteBackOutbox.id)
            .limit(limit - deleted)
            .with_for_update(skip_locked=True)
        ).all()
        if ids:
            session.execute(
                delete(WriteBackOutbox)
                .where(WriteBackOutbox.id.in_(list(ids)))
                .execution_options(synchronize_session=False)
            )
            deleted += len(ids)
    session.commit()
    return deleted
