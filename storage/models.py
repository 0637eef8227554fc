"""The tables. Changes here need an Alembic migration in ``storage/migrations``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, String, Text, UniqueConstraint
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

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    template_version: Mapped[str] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)


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
