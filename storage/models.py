"""The tables. Changes here need an Alembic migration in ``storage/migrations``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_external", "external_id", "external_source", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    text: Mapped[str | None] = mapped_column(Text)
    text_storage: Mapped[str] = mapped_column(String(16))
    text_sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(16))
    scores: Mapped[dict[str, float]] = mapped_column(JSON)
    confidence: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(200), index=True)
    template_version: Mapped[str] = mapped_column(String(64), index=True)
    routing_key_sha256: Mapped[str | None] = mapped_column(String(64))
    latency_ms: Mapped[float] = mapped_column(Float)
    language: Mapped[str | None] = mapped_column(String(8))
    # The caller's own id of the scored text (a ticket, review or chat) and its system.
    external_id: Mapped[str | None] = mapped_column(String(200))
    external_source: Mapped[str | None] = mapped_column(String(100))


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_feedback_idempotency_key"),
        Index("ix_feedback_prediction_id", "prediction_id"),
        Index("ix_feedback_created_at", "created_at"),
        Index("uq_feedback_unkeyed_body", "prediction_id", "unkeyed_body_sha256", unique=True),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    prediction_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("predictions.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))  # "label" or "verdict"
    label: Mapped[str | None] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16))
    effective_label: Mapped[str | None] = mapped_column(String(16))
    agrees: Mapped[bool] = mapped_column()
    comment: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(100))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    body_sha256: Mapped[str] = mapped_column(String(64))
    # ``body_sha256`` of feedback sent without an idempotency key (else NULL): unique
    # per prediction, so that of identical key-less posts racing each other one row
    # is stored and the others are refused by the database (409).
    unkeyed_body_sha256: Mapped[str | None] = mapped_column(String(64))


class WebhookInbox(Base):
    """Events received from CRM webhooks, kept until handled (``storage.inbox``).

    One row per (connector, CRM event id): a delivery retried or replayed is stored
    once. ``kind``: ``text`` (a text to score: ``text``, cut to what /v1/predict
    takes) or ``feedback`` (a CRM signal read as feedback: ``label``, and ``signal``,
    the CRM's own value such as a CSAT score or a tag). ``status``: ``pending`` (to
    handle; ``lease_until`` holds it for the worker handling it, or until its retry
    is due), ``done`` (``done_at``; ``prediction_id``: the prediction made of the
    text, or the one the feedback was applied to; a text is dropped), ``failed``
    (given up after repeated errors: ``last_error``; a text kept to replay it) or
    ``unmatched`` (feedback on a ticket without a prediction: ``last_error`` says
    why). Handled rows stay so that a replay of an old event is still told, until
    the service purges them (``storage.retention``).
    """

    __tablename__ = "webhook_inbox"
    __table_args__ = (
        UniqueConstraint("connector", "event_id", name="uq_webhook_inbox_event"),
        Index("ix_webhook_inbox_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    connector: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    text: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(16))
    signal: Mapped[str | None] = mapped_column(String(200))
    external_id: Mapped[str] = mapped_column(String(200))
    comment_id: Mapped[str | None] = mapped_column(String(200))
    author: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str | None] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(Integer)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    prediction_id: Mapped[str | None] = mapped_column(String(36))
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WriteBackOutbox(Base):
    """Labels to write back to the CRM's ticket (``storage.outbox``), one row per
    inbox event scored, added in the transaction that marks the event done.

    ``status``: ``pending`` (to send; ``lease_until`` holds it for the worker sending
    it, or until its retry is due), ``done`` (``sent_at``), ``dead`` (given up:
    ``last_error``, ``last_status``; ``sentiloop writeback replay`` sends it again) or
    ``superseded`` (a newer label of the ticket replaced it before it was sent).
    What is written is kept (label, confidence); how (URLs, credentials) comes from
    the settings when it is sent. ``message_id`` is the idempotency key, the same
    on every attempt (Standard Webhooks' ``webhook-id``). Rows other than pending are
    deleted once past their retention (``storage.retention``).
    """

    __tablename__ = "writeback_outbox"
    __table_args__ = (
        UniqueConstraint("connector", "event_id", name="uq_writeback_outbox_event"),
        Index("ix_writeback_outbox_status_id", "status", "id"),
        Index("ix_writeback_outbox_ticket", "connector", "external_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    connector: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(200))
    external_id: Mapped[str] = mapped_column(String(200))
    comment_id: Mapped[str | None] = mapped_column(String(200))
    message_id: Mapped[str] = mapped_column(String(64))
    prediction_id: Mapped[str] = mapped_column(String(36))
    label: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(200))
    template_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelAssignment(Base):
    """Append-only history of model roles; the newest row per role is current.

    Roles: ``champion`` (serves by default) and ``challenger`` (may get a share
    of traffic). Promotion, demotion and rollback each append a row.
    """

    __tablename__ = "model_assignments"
    __table_args__ = (Index("ix_model_assignments_role_id", "role", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    role: Mapped[str] = mapped_column(String(16))
    model_tag: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    training_run_id: Mapped[str | None] = mapped_column(String(36))


class TemplateDecision(Base):
    """Append-only history of the default prompt template version (the newest row is
    current; none: the settings' ``default_template_version``)."""

    __tablename__ = "template_decisions"
    __table_args__ = (UniqueConstraint("follows_id", name="uq_template_decisions_follows_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    template_version: Mapped[str] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The decision this one was made on (0: none before it), unique: of two decisions
    # taken at once from the same state (two `experiments conclude`), one is recorded.
    follows_id: Mapped[int] = mapped_column()


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    trigger: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # running, succeeded, failed
    feedback_cutoff: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decision: Mapped[str | None] = mapped_column(String(16))  # promoted, challenger, rejected
    reason: Mapped[str | None] = mapped_column(Text)
    candidate_tag: Mapped[str | None] = mapped_column(String(200))
    champion_tag: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)


class Lock(Base):
    """A named lease (e.g. "training"): held until released or expired."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
