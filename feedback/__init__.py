"""The prediction log and feedback store.

This package owns the database: SQLAlchemy models, Alembic migrations and the
store functions. It imports neither ``service`` nor ``training``.
"""

from feedback.db import discard_freed_pages, make_engine, make_session_factory, ping
from feedback.errors import (
    DuplicateFeedback,
    FeedbackError,
    IdempotencyConflict,
    InvalidTimeRange,
    PredictionNotFound,
    StoreUnavailable,
)
from feedback.ids import created_at_of, time_ordered_id
from feedback.log_writer import PredictionLogWriter
from feedback.migrate import upgrade
from feedback.records import FeedbackInput, FeedbackResult, PredictionRecord
from feedback.spool import Spool

__all__ = [
    "DuplicateFeedback",
    "FeedbackError",
    "FeedbackInput",
    "FeedbackResult",
    "IdempotencyConflict",
    "InvalidTimeRange",
    "PredictionLogWriter",
    "PredictionNotFound",
    "PredictionRecord",
    "Spool",
    "StoreUnavailable",
    "created_at_of",
    "discard_freed_pages",
    "make_engine",
    "make_session_factory",
    "ping",
    "time_ordered_id",
    "upgrade",
]
