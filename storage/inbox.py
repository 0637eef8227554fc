"""The webhook inbox: CRM events kept from their receipt until they are handled.

A delivery is answered once its events are committed here (``add``), so nothing a
CRM was told is accepted can be lost to a crash; the scoring happens after, in the
service's inbox worker, which takes rows with a lease (``claim``) so that workers
and replicas share them without scoring one twice at once, and a row whose worker
died is taken again when its lease ends. Scoring is at least once: a worker that
dies after logging the prediction and before ``mark_done`` leaves the row to be
scored again.

Feedback from the CRM (a CSAT score, an agent's tag: ``connectors.feedback``) is kept
here the same way (``kind`` ``feedback``, its ``label`` and the CRM's ``signal`` in
columns of their own), until it is applied to the ticket's latest prediction. A
feedback row whose ticket has no prediction, and no text of it waiting to be scored,
ends ``unmatched``. Failed and unmatched rows are replayed by ``replay`` (``sentiloop
webhooks replay``); handled rows are deleted after the retention (``purge``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Table, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage import outbox
from storage.models import WebhookInbox
from storage.store import utcnow

PENDING, DONE, FAILED, UNMATCHED = "pending", "done", "failed", "unmatched"
STATUSES = (PENDING, DONE, FAILED, UNMATCHED)
GIVEN_UP = (FAILED, UNMATCHED)  # what ``replay`` takes up again
TEXT, FEEDBACK = "text", "feedback"  # a row's kind
INBOX_TABLE: Table = WebhookInbox.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class FeedbackSignal:
    """What a feedback row applies: ``label`` (from the CRM's ``signal``, its value)."""

    label: str
    signal: str


@dataclass(frozen=True)
class InboxEntry:
    """An event as received: the text to score under the CRM's ticket id, or (with
    ``feedback``) a label for the ticket's latest prediction."""

    connector: str
    event_id: str
    event_type: str
    text: str
    external_id: str
    comment_id: str | None = None
    author: str | None = None
    language: str | None = None
    feedback: FeedbackSignal | None = None


def _entry(row: WebhookInbox) -> InboxEntry:
    feedback = None
    if row.kind == FEEDBACK:
        feedback = FeedbackSignal(label=row.label or "", signal=row.signal or "")
    return InboxEntry(
        connector=row.connector,
        event_id=row.event_id,
        event_type=row.event_type,
        text=row.text or "",
        external_id=row.external_id,
        comment_id=row.comment_id,
        author=row.author,
        language=row.language,
        feedback=feedback,
    )


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
        feedback = entry.feedback
        statement = (
            insert(INBOX_TABLE)
            .values(
                connector=entry.connector,
                event_id=entry.event_id,
                event_type=entry.event_type[:200],
                kind=TEXT if feedback is None else FEEDBACK,
                received_at=now,
                status=PENDING,
                text=entry.text if feedback is None else None,
                label=None if feedback is None else feedback.label,
                signal=None if feedback is None else feedback.signal[:200],
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
    return [InboxItem(id=row.id, attempts=row.attempts, entry=_entry(row)) for row in rows]


def mark_done(
    *,
    session: Session,
    item_id: int,
    prediction_id: str,
    writeback: outbox.WriteBack | None = None,
    now: datetime | None = None,
) -> None:
    """Done: a text scored (its prediction's id kept, the text dropped: the prediction
    log holds it as ``SENTILOOP_TEXT_STORAGE`` says), or feedback applied (the id of
    the prediction it judged). The label to write back to the ticket is added to the
    outbox in the same transaction: a restart loses neither. Committed."""
    session.execute(
        update(WebhookInbox)
        .where(WebhookInbox.id == item_id)
        .values(
            status=DONE,
            prediction_id=prediction_id,
            done_at=now or utcnow(),
            text=None,
            lease_until=None,
        )
    )
    if writeback is not None:
        outbox.add(session=session, write=writeback, now=now)
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


def defer(
    *, session: Session, item_id: int, retry_in_s: float, now: datetime | None = None
) -> None:
    """Take the row up again after ``retry_in_s``, no attempt counted: feedback whose
    ticket has a text still waiting to be scored. Committed."""
    now = now or utcnow()
    session.execute(
        update(WebhookInbox)
        .where(WebhookInbox.id == item_id)
        .values(lease_until=now + timedelta(seconds=retry_in_s))
    )
    session.commit()


def mark_unmatched(*, session: Session, item_id: int, reason: str) -> None:
    """Feedback that names a ticket without a prediction: kept (with its label, to
    look at or replay), never taken up again. Committed."""
    session.execute(
        update(WebhookInbox)
        .where(WebhookInbox.id == item_id)
        .values(status=UNMATCHED, last_error=reason[:2000], lease_until=None)
    )
    session.commit()


def scoring_pending(*, session: Session, connector: str, external_id: str) -> bool:
    """Whether a text of the ticket waits in the inbox to be scored (leased to a worker
    scoring it now, or due for a retry)."""
    found = session.scalar(
        select(WebhookInbox.id)
        .where(
            WebhookInbox.status == PENDING,
            WebhookInbox.connector == connector,
            WebhookInbox.external_id == external_id,
            WebhookInbox.kind == TEXT,
        )
        .limit(1)
    )
    return found is not None


def count_by_status(*, session: Session, statuses: Sequence[str] = STATUSES) -> dict[str, int]:
    """Rows per status (those named; a status without rows is left out). Done rows pile
    up (kept to tell replays, until purged): the inbox worker counts only the others,
    which the (status, id) index finds without reading the done ones."""
    rows = session.execute(
        select(WebhookInbox.status, func.count())
        .where(WebhookInbox.status.in_(statuses))
        .group_by(WebhookInbox.status)
    ).all()
    return {status: count for status, count in rows}


@dataclass(frozen=True)
class InboxRow:
    """A row as ``sentiloop webhooks list`` shows it (never its text)."""

    id: int
    connector: str
    kind: str
    event_type: str
    external_id: str
    label: str | None
    signal: str | None
    status: str
    attempts: int
    received_at: datetime
    done_at: datetime | None
    prediction_id: str | None
    last_error: str | None
    next_attempt_at: datetime | None


def list_rows(
    *,
    session: Session,
    statuses: Sequence[str] = STATUSES,
    connector: str | None = None,
    kind: str | None = None,
    limit: int = 50,
) -> list[InboxRow]:
    """The newest rows first, of the statuses named, and of one connector and kind when
    named."""
    query = (
        select(WebhookInbox)
        .where(WebhookInbox.status.in_(list(statuses)))
        .order_by(WebhookInbox.id.desc())
        .limit(limit)
    )
    if connector is not None:
        query = query.where(WebhookInbox.connector == connector)
    if kind is not None:
        query = query.where(WebhookInbox.kind == kind)
    return [
        InboxRow(
            id=row.id,
            connector=row.connector,
            kind=row.kind,
            event_type=row.event_type,
            external_id=row.external_id,
            label=row.label,
            signal=row.signal,
            status=row.status,
            attempts=row.attempts,
            received_at=row.received_at,
            done_at=row.done_at,
            prediction_id=row.prediction_id,
            last_error=row.last_error,
            next_attempt_at=row.lease_until if row.status == PENDING else None,
        )
        for row in session.scalars(query).all()
    ]


def replay(
    *,
    session: Session,
    ids: Sequence[int] | None = None,
    statuses: Sequence[str] = GIVEN_UP,
    connector: str | None = None,
) -> list[int]:
    """Make failed or unmatched rows (those of ``statuses``) pending again, with a fresh
    count of attempts: those of ``ids``, or all of them (of ``connector`` when named)
    when ``ids`` is None. The inbox worker takes them up within its poll interval: a
    text is scored, feedback applied if its ticket has a prediction by then. Returns
    the ids made pending (a row of another status is left as it is). Committed."""
    chosen_statuses = [status for status in statuses if status in GIVEN_UP]
    statement = update(WebhookInbox).where(WebhookInbox.status.in_(chosen_statuses))
    if ids is not None:
        statement = statement.where(WebhookInbox.id.in_(list(ids)))
    if connector is not None:
        statement = statement.where(WebhookInbox.connector == connector)
    chosen = sorted(
        session.scalars(
            statement.values(status=PENDING, attempts=0, lease_until=None)
            .returning(WebhookInbox.id)
            .execution_options(synchronize_session=False)
        ).all()
    )
    session.commit()
    return chosen


def purge(
    *, session: Session, statuses: Sequence[str], received_before: datetime, limit: int
) -> int:
    """Delete up to ``limit`` rows of ``statuses`` received before ``received_before``,
    oldest first; returns how many (committed). Pending rows are never deleted. Each
    status is read through the (status, id) index, oldest first, so a batch reads
    about as many rows as it deletes; on PostgreSQL, rows another worker is deleting
    at the same time are skipped, not waited for."""
    deleted = 0
    for status in statuses:
        if status == PENDING or deleted >= limit:
            continue
        ids = session.scalars(
            select(WebhookInbox.id)
            .where(WebhookInbox.status == status, WebhookInbox.received_at < received_before)
            .order_by(WebhookInbox.id)
            .limit(limit - deleted)
            .with_for_update(skip_locked=True)
        ).all()
        if ids:
            session.execute(
                delete(WebhookInbox)
                .where(WebhookInbox.id.in_(list(ids)))
                .execution_options(synchronize_session=False)
            )
            deleted += len(ids)
    session.commit()
    return deleted
