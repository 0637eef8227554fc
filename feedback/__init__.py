"""The prediction log and feedback store.

This package owns the database: SQLAlchemy models, Alembic migrations and the
store functions. It imports neither ``service`` nor ``training``.
"""

from feedback.db import make_engine, make_session_factory, ping
from feedback.errors import (
    DuplicateFeedback,
    FeedbackError,
    IdempotencyConflict,
    PredictionNotFound,
    StoreUnavailable,
)
from feedback.ids import time_ordered_id
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
    "PredictionLogWriter",
    "PredictionNotFound",
    "PredictionRecord",
    "Spool",
    "StoreUnavailable",
    "make_engine",
    "make_session_factory",
    "ping",
    "time_ordered_id",
    "upgrade",
]
