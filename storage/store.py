"""Store functions: each takes a keyword-only session (or session factory)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import (
    AmbiguousExternalId,
    DuplicateFeedback,
    ExternalIdNotFound,
    IdempotencyConflict,
    InvalidTimeRange,
    PredictionNotFound,
)
from storage.ids import time_ordered_id
from storage.models import Feedback, Prediction
from storage.records import FeedbackInput, FeedbackResult, PredictionRecord


def utcnow() -> datetime:
    return datetime.now(UTC)


_PREDICTION_FIELDS = tuple(field.name for field in fields(PredictionRecord))
PREDICTIONS_TABLE: Table = Prediction.__table__  # type: ignore[assignment]


def insert_predictions(*, session: Session, records: Sequence[PredictionRecord]) -> None:
    """Insert prediction rows in one Core executemany; the caller commits.

    Rows are built shallowly and go to the table, not the ORM entity: the ORM's
    bulk path and ``dataclasses.asdict``'s deep copies cost more than the
    database on a busy server.
    """
    if not records:
        return
    rows = []
    for record in records:
        row = {name: getattr(record, name) for name in _PREDICTION_FIELDS}
        row["confidence"] = record.confidence
        rows.append(row)
    session.execute(insert(PREDICTIONS_TABLE), rows)


def purge_texts(*, session: Session, before: datetime) -> tuple[int, int]:
    """Remove the logged texts of predictions and the comments of feedback older
    than ``before``; returns how many of each.

    Rows stay (labels, scores, versions, feedback), only the free text goes; the
    caller commits, then ``core.database.discard_freed_pages`` removes what the
    database file and its log still hold.
    """
    texts = session.execute(
        update(Prediction)
        .where(Prediction.created_at < before, Prediction.text.is_not(None))
        .values(text=None, text_storage="purged")
    )
    comments = session.execute(
        update(Feedback)
        .where(Feedback.created_at < before, Feedback.comment.is_not(None))
        .values(comment=None)
    )
    return (
        int(cast(CursorResult[Any], texts).rowcount or 0),
        int(cast(CursorResult[Any], comments).rowcount or 0),
    )


def get_prediction(*, session: Session, prediction_id: str) -> Prediction | None:
    return session.get(Prediction, prediction_id)


def _body_sha256(feedback: FeedbackInput) -> str:
    body = {
        "prediction_id": feedback.prediction_id,
        **({"external_id": feedback.external_id} if feedback.external_id is not None else {}),
        "label": feedback.label,
        "verdict": feedback.verdict,
        "comment": feedback.comment,
        "source": feedback.source,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def latest_with_external_id(
    *, session: Session, external_id: str, source: str | None, before: datetime
) -> tuple[Prediction, int]:
    """The latest prediction scored with ``external_id`` at or before ``before``, and
    how many carried it.

    With ``source``: those scored from that source. Without: those scored without
    a source, if any (so that every prediction can be named: a ticket scored
    without a source and from two sources was ambiguous for ever), else those of the
    one source that scored it; several sources and none of them absent needs
    ``source`` (``AmbiguousExternalId``).
    """
    matching = [Prediction.external_id == external_id, Prediction.created_at <= before]
    if source is not None:
        matching.append(Prediction.external_source == source)
    else:
        sources = session.scalars(
            select(Prediction.external_source).where(*matching).distinct().limit(5)
        ).all()
        if None in sources:
            matching.append(Prediction.external_source.is_(None))
        elif len(sources) > 1:
            raise AmbiguousExternalId(external_id, sorted(sources, key=str))
    latest = session.scalars(
        select(Prediction)
        .where(*matching)
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .limit(1)
    ).first()
    if latest is None:
        raise ExternalIdNotFound(external_id, source)
    count = session.scalar(select(func.count()).select_from(Prediction).where(*matching))
    return latest, int(count or 0)


def _result(
    row: Feedback, prediction: Prediction, *, replayed: bool, matches: int | None = None
) -> FeedbackResult:
    return FeedbackResult(
        feedback_id=row.id,
        prediction_id=row.prediction_id,
        created_at=as_utc(row.created_at),
        kind=row.kind,
        predicted_label=prediction.label,
        effective_label=row.effective_label,
        agrees=row.agrees,
        model_version=prediction.model_version,
        template_version=prediction.template_version,
        replayed=replayed,
        external_id=prediction.external_id if matches is not None else None,
        predictions_with_external_id=matches,
    )


def _replay(session: Session, key: str, body_sha256: str) -> FeedbackResult | None:
    existing = session.scalars(select(Feedback).where(Feedback.idempotency_key == key)).first()
    if existing is None:
        return None
    if existing.body_sha256 != body_sha256:
        raise IdempotencyConflict(key)
    prediction = session.get(Prediction, existing.prediction_id)
    assert prediction is not None  # foreign key
    return _result(existing, prediction, replayed=True)


def _judge(feedback: FeedbackInput, predicted_label: str) -> tuple[str, str | None, bool]:
    """(kind, effective label, agrees with the prediction) of one piece of feedback."""
    if feedback.label is not None:
        return "label", feedback.label, feedback.label == predicted_label
    if feedback.verdict == "correct":
        return "verdict", predicted_label, True
    return "verdict", None, False


def record_feedback(
    *, session_factory: sessionmaker[Session], feedback: FeedbackInput
) -> FeedbackResult:
    """Store one piece of feedback durably (committed) and describe it.

    A repeated ``idempotency_key`` with the same body returns the first result
    (``replayed=True``) without a new row; with another body it is a conflict.
    Identical feedback without a key is refused as a duplicate: by the unique index
    on ``unkeyed_body_sha256`` when identical posts race each other.
    """
    body_sha256 = _body_sha256(feedback)
    with session_factory() as session:
        if feedback.idempotency_key is not None:
            replay = _replay(session, feedback.idempotency_key, body_sha256)
            if replay is not None:
                return replay
        now = utcnow()
        matches: int | None = None
        if feedback.external_id is not None:
            prediction, matches = latest_with_external_id(
                session=session,
                external_id=feedback.external_id,
                source=feedback.source,
                before=now,
            )
        else:
            assert feedback.prediction_id is not None  # FeedbackInput checks
            found = session.get(Prediction, feedback.prediction_id)
            if found is None:
                raise PredictionNotFound(feedback.prediction_id)
            prediction = found
        if feedback.idempotency_key is None:
            twin = session.scalars(
                select(Feedback.id).where(
                    Feedback.prediction_id == prediction.id,
                    Feedback.body_sha256 == body_sha256,
                )
            ).first()
            if twin is not None:
                raise DuplicateFeedback(prediction.id, twin)
        kind, effective_label, agrees = _judge(feedback, prediction.label)
        judged_id = prediction.id
        row = Feedback(
            id=time_ordered_id(),
            prediction_id=prediction.id,
            created_at=now,
            kind=kind,
            label=feedback.label,
            verdict=feedback.verdict,
            effective_label=effective_label,
            agrees=agrees,
            comment=feedback.comment,
            source=feedback.source,
            idempotency_key=feedback.idempotency_key,
            body_sha256=body_sha256,
            unkeyed_body_sha256=body_sha256 if feedback.idempotency_key is None else None,
        )
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            # A concurrent request with the same idempotency key, or identical
            # feedback without one, won the race.
            session.rollback()
            if feedback.idempotency_key is None:
                twin = session.scalars(
                    select(Feedback.id).where(
                        Feedback.prediction_id == judged_id,
                        Feedback.unkeyed_body_sha256 == body_sha256,
                    )
                ).first()
                if twin is None:
                    raise
                raise DuplicateFeedback(judged_id, twin) from None
            replay = _replay(session, feedback.idempotency_key, body_sha256)
            if replay is None:
                raise
            return replay
        return _result(row, prediction, replayed=False, matches=matches)


EXPORT_FIELDS = (
    "feedback_id",
    "feedback_created_at",
    "prediction_id",
    "prediction_created_at",
    "text",
    "text_storage",
    "text_sha256",
    "predicted_label",
    "confidence",
    "scores",
    "model_version",
    "template_version",
    "language",
    "external_id",
    "external_source",
    "kind",
    "label",
    "verdict",
    "effective_label",
    "agrees",
    "comment",
    "source",
)


def iter_feedback_export(
    *,
    session: Session,
    since: datetime | None = None,
    until: datetime | None = None,
    chunk_size: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Feedback joined with its prediction, oldest first, in ``[since, until)``."""
    query = (
        select(Feedback, Prediction)
        .join(Prediction, Feedback.prediction_id == Prediction.id)
        .order_by(Feedback.created_at, Feedback.id)
    )
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    if until is not None:
        query = query.where(Feedback.created_at < until)
    for fb, prediction in session.execute(query.execution_options(yield_per=chunk_size)):
        yield {
            "feedback_id": fb.id,
            "feedback_created_at": _iso(fb.created_at),
            "prediction_id": prediction.id,
            "prediction_created_at": _iso(prediction.created_at),
            "text": prediction.text,
            "text_storage": prediction.text_storage,
            "text_sha256": prediction.text_sha256,
            "predicted_label": prediction.label,
            "confidence": prediction.confidence,
            "scores": prediction.scores,
            "model_version": prediction.model_version,
            "template_version": prediction.template_version,
            "language": prediction.language,
            "external_id": prediction.external_id,
            "external_source": prediction.external_source,
            "kind": fb.kind,
            "label": fb.label,
            "verdict": fb.verdict,
            "effective_label": fb.effective_label,
            "agrees": fb.agrees,
            "comment": fb.comment,
            "source": fb.source,
        }


def recent_unlabelled_texts(
    *, session: Session, until: datetime, limit: int, since: datetime | None = None
) -> list[str]:
    """Logged texts of predictions without feedback made before ``until``, newest
    first (at most ``limit``; texts not stored are skipped): the traffic a retrained
    model rehearses on (``training.rehearsal``)."""
    if limit <= 0:
        return []
    has_feedback = select(Feedback.id).where(Feedback.prediction_id == Prediction.id).exists()
    query = (
        select(Prediction.text)
        .where(Prediction.text.is_not(None), Prediction.created_at < until, ~has_feedback)
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(Prediction.created_at >= since)
    return [text for text in session.scalars(query) if text]


def utc_bounds(
    since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """``[since, until)`` in UTC (naive times are UTC); ``InvalidTimeRange`` names the
    bound that overflows (year 9999 with a negative offset, say), or ``since`` when it
    is later than ``until`` (an empty answer would look like no data)."""
    bounds = []
    for name, moment in (("since", since), ("until", until)):
        try:
            bounds.append(None if moment is None else as_utc(moment))
        except OverflowError as exc:
            raise InvalidTimeRange(name, moment.isoformat() if moment else moment) from exc
    start, end = bounds
    if start is not None and end is not None and start > end:
        raise InvalidTimeRange("since", start.isoformat(), f"is later than until={end.isoformat()}")
    return start, end


def as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return as_utc(moment).isoformat()
