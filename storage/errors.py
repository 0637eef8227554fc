"""Domain errors of the store; the HTTP boundary maps them to status codes."""

from __future__ import annotations


class FeedbackError(Exception):
    """Base class of the store's errors."""

    field: str | None = None


class PredictionNotFound(FeedbackError):
    field = "prediction_id"

    def __init__(self, prediction_id: str) -> None:
        super().__init__(f"no prediction with prediction_id={prediction_id!r}")
        self.prediction_id = prediction_id


class ExternalIdNotFound(FeedbackError):
    field = "external_id"

    def __init__(self, external_id: str, source: str | None) -> None:
        where = f" from source={source!r}" if source is not None else ""
        super().__init__(
            f"no prediction scored with external_id={external_id!r}{where} before this feedback"
        )


class AmbiguousExternalId(FeedbackError):
    field = "source"

    def __init__(self, external_id: str, sources: list[str | None]) -> None:
        names = ", ".join(repr(s) for s in sources)
        super().__init__(
            f"external_id={external_id!r} was scored from several sources ({names}); "
            "name the one meant in 'source'"
        )


class IdempotencyConflict(FeedbackError):
    field = "idempotency_key"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency_key {key!r} was already used with a different feedback body; "
            "use a new key for new feedback"
        )


class DuplicateFeedback(FeedbackError):
    field = "prediction_id"

    def __init__(self, prediction_id: str, feedback_id: str) -> None:
        super().__init__(
            f"identical feedback for prediction_id={prediction_id!r} already exists "
            f"(feedback_id={feedback_id!r}); send an idempotency_key to retry safely"
        )
        self.feedback_id = feedback_id


class StoreUnavailable(FeedbackError):
    """The database cannot take the feedback now. The message is for clients: it
    names no host, port or driver detail (the server log has those)."""

    def __init__(self, what: str = "the feedback store is unavailable") -> None:
        super().__init__(f"{what}; retry shortly")


class InvalidTimeRange(FeedbackError):
    """A ``since``/``until`` bound that cannot be expressed in UTC, or a ``since``
    later than ``until``."""

    def __init__(self, field: str, value: object, problem: str | None = None) -> None:
        super().__init__(f"{field}={value} {problem or 'is out of range once converted to UTC'}")
        self.field = field
