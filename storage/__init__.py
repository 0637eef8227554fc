"""The prediction log and feedback store.

This package owns the database: SQLAlchemy models, Alembic migrations and the
store functions. It imports neither ``service`` nor ``training``.
"""

from storage.errors import (
    AmbiguousExternalId,
    DuplicateFeedback,
    ExternalIdNotFound,
    FeedbackError,
    IdempotencyConflict,
    InvalidTimeRange,
    PredictionNotFound,
    StoreUnavailable,
)
from storage.ids import created_at_of, time_ordered_id
from storage.log_writer import PredictionLogWriter
from storage.migrate import upgrade
from storage.records import FeedbackInput, FeedbackResult, PredictionRecord
from storage.spool import Spool

__all__ = [
    "AmbiguousExternalId",
    "DuplicateFeedback",
    "ExternalIdNotFound",
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
    "time_ordered_id",
    "upgrade",
]
