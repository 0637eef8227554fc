"""What the API does, without BentoML: routing, scoring calls, logging, feedback.

``service.bento`` builds one ``SentimentAPI`` per worker and calls it from
thin endpoint methods; ``service.http.errors`` turns the domain errors raised
here into HTTP responses.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import storage
from core import database
from core.settings import Settings
from feedback import experiments
from feedback.intake import first_problem, to_input
from feedback.review_queue import review_queue
from model.labels import scores_to_label
from model.language import metric_language
from model.templates import TemplateRegistry
from model.text_keys import text_sha256
from service.http.errors import status_of
from service.http.routing import TrafficSplit, serving_arms
from service.http.schemas import (
    FeedbackBatchRequest,
    FeedbackBatchResponse,
    FeedbackItemResult,
    FeedbackRequest,
    FeedbackResponse,
    Prediction,
    PredictRequest,
    PredictResponse,
)
from service.inference.scoring import ScoreItem, ScoreResult
from service.metrics import ApiMetrics
from storage import store, template_decisions
from storage.export import ExportFormat, serialize
from storage.redaction import stored_text

logger = logging.getLogger(__name__)

# The experiments report's window when the request names none.
REPORT_WINDOW = timedelta(days=7)
# Allowance for clocks of replicas that disagree, when judging a prediction id's age.
_CLOCK_SKEW_S = 1.0
_BUDGET_SPENT = "not reached within the batch's time budget; not stored, retry it"
_NOT_AN_OBJECT = "an item must be a JSON object: the body of POST /v1/feedback"
_LOG_BEHIND = "the prediction log is behind; not stored, retry it"

Classify = Callable[[Sequence[ScoreItem]], Awaitable[list[ScoreResult]]]


class SentimentAPI:
    """The API's logic over parts built once by ``service.bento.SentiLoop``: the
    database sessions and engine, the prediction-log writer (started), metrics."""

    def __init__(
        self,
        settings: Settings,
        registry: TemplateRegistry,
        metrics: ApiMetrics,
        *,
        database_engine: Engine,
        sessions: sessionmaker[Session],
        log_writer: storage.PredictionLogWriter,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        for arm in settings.traffic_split:
            registry.get(arm.template_version)  # an unknown version fails at start-up
        self.database_engine = database_engine
        self.sessions = sessions
        self.log_writer = log_writer
        self._waiters = threading.BoundedSemaphore(settings.feedback_lookup_waiters)
        self.split = self._split(None)
        self.decision: template_decisions.Decision | None = None
        # SENTILOOP_TRAFFIC_SPLIT, to record in the database (refresh_routing).
        self._seed_pending = settings.traffic_split_configured
        metrics.set_traffic_split(self.traffic_split())

    def _split(self, decision: template_decisions.Decision | None) -> TrafficSplit:
        configured = self.settings.traffic_split if self.settings.traffic_split_configured else None
        arms = serving_arms(configured, self.settings.default_template_version, decision)
        return TrafficSplit(arms, salt=self.settings.routing_salt)

    def refresh_routing(self) -> None:
        """Follow the latest template decision (an experiment concluded or reverted);
        the periodic refresher and the reload endpoint call this."""
        if self._seed_pending:
            self._record_seed()
        with self.sessions() as session:
            decision = template_decisions.latest(session=session)
        if decision == self.decision:
            return
        experiment = decision.experiment if decision is not None else None
        named = {arm.template_version for arm in experiment.arms} if experiment else set()
        if decision is not None:
            named.add(decision.template_version)
        unknown = sorted(named - set(self.registry.versions))
        if decision is not None and unknown:
            logger.error(
                "template decision %d names unknown version(s) %s; routing unchanged",
                decision.id,
                unknown,
            )
            return
        self.split = self._split(decision)
        self.decision = decision
        logger.info(
            "routing follows template decision %s: %s",
            decision and decision.id,
            self.traffic_split(),
        )
        self.metrics.set_traffic_split(self.traffic_split())

    def _record_seed(self) -> None:
        """Record SENTILOOP_TRAFFIC_SPLIT as a started experiment unless the database
        ever ran it (``template_decisions.seed``): from then on the database says what
        runs. Workers and replicas racing to record it record it once; the loser tries
        again on its next poll and finds it."""
        with self.sessions() as session:
            try:
                recorded = template_decisions.seed(
                    session=session,
                    arms=self.settings.traffic_split,
                    default_version=self.settings.default_template_version,
                    actor=f"server@{socket.gethostname()}",
                )
                session.commit()
            except template_decisions.DecisionConflict:
                return
        self._seed_pending = False
        if recorded is not None:
            logger.info("SENTILOOP_TRAFFIC_SPLIT recorded as decision %d", recorded.id)

    def is_ready(self) -> bool:
        """Ready when the database answers and prediction-log writes succeed."""
        problem = self.log_writer.problem
        if problem is not None:
            logger.warning("not ready: %s", problem)
            return False
        try:
            database.ping(self.database_engine)
        except SQLAlchemyError as exc:
            logger.warning("not ready: database unreachable: %s", type(exc).__name__)
            return False
        return True

    def _stored_text(self, text: str) -> str | None:
        return stored_text(text, self.settings.text_storage)

    def _log(
        self,
        request: PredictRequest,
        texts: list[str],
        results: list[ScoreResult],
        predictions: list[Prediction],
        latency_ms: float,
    ) -> None:
        """Hand the request's prediction records to the log writer (no waiting)."""
        now = datetime.now(UTC)
        routing_keys = request.all_routing_keys
        routing_hashes = {
            key: hashlib.sha256(key.encode()).hexdigest()
            for key in set(routing_keys)
            if key is not None
        }
        self.log_writer.submit(
            [
                storage.PredictionRecord(
                    id=prediction.prediction_id,
                    created_at=now,
                    text=self._stored_text(text),
                    text_storage=self.settings.text_storage,
                    text_sha256=text_sha256(text),
                    label=prediction.label,
                    scores=result.scores,
                    model_version=prediction.model_version,
                    template_version=prediction.template_version,
                    latency_ms=latency_ms,
                    routing_key_sha256=routing_hashes.get(routing_key)
                    if routing_key is not None
                    else None,
                    language=prediction.language,
                    external_id=prediction.external_id,
                    external_source=request.source if prediction.external_id is not None else None,
                )
                for text, result, prediction, routing_key in zip(
                    texts, results, predictions, routing_keys, strict=True
                )
            ]
        )

    async def predict(self, request: PredictRequest, classify: Classify) -> PredictResponse:
        if request.template_version is not None:
            self.registry.get(request.template_version)  # 404 for an unknown version
        texts = request.all_texts
        if request.routing_keys is None:  # one arm for the request
            routes = [self.split.choose(request.routing_key, request.template_version)] * len(texts)
        else:  # an arm per text (tickets of several customers)
            routes = [
                self.split.choose(key, request.template_version) for key in request.routing_keys
            ]
        self.metrics.request_texts.observe(len(texts))
        started = time.perf_counter()
        results = await classify(
            [
                ScoreItem(
                    text=text,
                    template_version=route.template_version,
                    model=route.model,
                    language=request.language,
                )
                for text, route in zip(texts, routes, strict=True)
            ]
        )
        latency_ms = (time.perf_counter() - started) * 1000
        predictions: list[Prediction] = []
        for result, route, external_id in zip(
            results, routes, request.all_external_ids, strict=True
        ):
            label = scores_to_label(result.scores)
            predictions.append(
                Prediction(
                    prediction_id=storage.time_ordered_id(),
                    label=label,
                    scores=result.scores,  # type: ignore[arg-type]
                    confidence=result.scores[label],
                    model_version=result.model_version,
                    template_version=route.template_version,
                    language=result.language,
                    language_supported=result.language_supported,
                    latency_ms=round(latency_ms, 3),
                    external_id=external_id,
                )
            )
        if self.settings.log_predictions:
            self._log(request, texts, results, predictions, latency_ms)
        for prediction in predictions:
            self.metrics.observe_prediction(
                prediction.label,
                prediction.confidence,
                prediction.model_version,
                prediction.template_version,
                metric_language(prediction.language),
                prediction.language_supported,
            )
        return PredictResponse(predictions=predictions)

    def record_feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """Store feedback durably; waits briefly for a prediction still in the log queue."""
        item = to_input(request, self.settings.text_storage)
        flushed = False
        if item.external_id is not None:
            # The latest prediction of a ticket may still wait in this worker's log
            # queue (a ticket scored and labelled moments apart): write it first.
            flushed = self.log_writer.flush(0.5)
        until: float | None = None  # the end of the wait for the prediction's log row
        try:
            while True:
                try:
                    return self._store(item)
                except storage.PredictionNotFound:
                    assert item.prediction_id is not None
                    if until is None:
                        window = self._lookup_window(item.prediction_id)
                        if window is None:
                            raise
                        self._start_waiting()
                        until = time.monotonic() + window
                    if not self._wait_for_log_rows(until):
                        raise
                except storage.ExternalIdNotFound:
                    # A ticket scored moments ago may still wait in this worker's log queue.
                    if flushed or not self.log_writer.flush(0.5):
                        raise
                    flushed = True
        finally:
            if until is not None:
                self._waiters.release()

    def _store(self, item: storage.FeedbackInput) -> FeedbackResponse:
        """One piece of feedback stored (committed) and counted; no waiting."""
        started = time.perf_counter()
        try:
            result = store.record_feedback(session_factory=self.sessions, feedback=item)
        except OperationalError as exc:
            self.metrics.db_errors.labels("feedback").inc()
            logger.warning(
                "feedback not stored: database unavailable: %s", database.describe_error(exc)
            )
            raise storage.StoreUnavailable() from exc
        self.metrics.db_write_seconds.labels("feedback").observe(time.perf_counter() - started)
        if not result.replayed:
            self.metrics.feedback.labels(
                result.kind,
                str(result.agrees).lower(),
                result.model_version,
                result.template_version,
            ).inc()
        return FeedbackResponse.model_validate(asdict(result))

    def record_feedback_batch(self, request: FeedbackBatchRequest) -> FeedbackBatchResponse:
        """Each item validated and stored on its own (committed before the next), with
        its own status: one bad item never drops the others.

        The batch has a time budget (``feedback_batch_budget_s``, below the HTTP
        timeout): items not reached in it are answered 503, not stored, instead of
        the client seeing a 504 while the rest is stored behind its back (and its
        retry getting 409s). The log is flushed once for the batch, and items naming
        predictions made moments ago that are not written yet wait together, once,
        at the end (they waited one after the other, up to 3.6 s each).
        """
        deadline = time.monotonic() + self.settings.feedback_batch_budget_s
        results: dict[int, FeedbackItemResult] = {}
        valid: list[tuple[int, storage.FeedbackInput]] = []
        for index, body in enumerate(request.items):
            if not isinstance(body, dict):  # one such item never drops the others
                results[index] = FeedbackItemResult(
                    index=index, status=400, error=_NOT_AN_OBJECT, field=None
                )
                continue
            try:
                parsed = FeedbackRequest.model_validate(body)
            except ValidationError as error:
                field, message = first_problem(error)
                results[index] = FeedbackItemResult(
                    index=index, status=400, error=message, field=field
                )
                continue
            valid.append((index, to_input(parsed, self.settings.text_storage)))
        # One flush for the batch (it was one per item: 1,000 items took 28 s).
        log_written = bool(valid) and self.log_writer.flush(0.5)
        pending: list[tuple[int, storage.FeedbackInput]] = []  # predictions not written yet
        windows: list[float] = []
        for position, (index, item) in enumerate(valid):
            if time.monotonic() >= deadline:
                self._unreached(valid[position:], results, _BUDGET_SPENT)
                break
            try:
                results[index] = self._stored(index, item, log_written=log_written)
            except storage.PredictionNotFound as error:
                assert item.prediction_id is not None
                try:
                    window = self._lookup_window(item.prediction_id)
                except storage.StoreUnavailable as unavailable:
                    self._unreached([(index, item)], results, str(unavailable))
                    continue
                if window is None:
                    results[index] = self._failed(index, error)
                else:
                    pending.append((index, item))
                    windows.append(window)
            except storage.StoreUnavailable as error:
                # Nothing after this item can be stored now either: each says so (503),
                # and the client retries those (idempotency keys make that safe).
                self._unreached(valid[position:] + pending, results, str(error))
                pending = []
                break
            except storage.FeedbackError as error:
                results[index] = self._failed(index, error)
        if pending:
            try:
                self._start_waiting()
            except storage.StoreUnavailable as error:
                self._unreached(pending, results, str(error))
            else:
                try:
                    self._store_pending(pending, time.monotonic() + max(windows), deadline, results)
                finally:
                    self._waiters.release()
        ordered = [results[index] for index in sorted(results)]
        return FeedbackBatchResponse(
            results=ordered,
            stored=sum(r.status == 201 for r in ordered),
            replayed=sum(r.status == 200 for r in ordered),
            failed=sum(r.status >= 400 for r in ordered),
        )

    def _stored(
        self, index: int, item: storage.FeedbackInput, *, log_written: bool
    ) -> FeedbackItemResult:
        """One batch item stored. An unknown ticket while the batch's log flush timed
        out may still be in the log queue: 503 (retry), not 404."""
        try:
            stored = self._store(item)
        except storage.ExternalIdNotFound:
            if log_written:
                raise
            return FeedbackItemResult(
                index=index, status=503, error=_LOG_BEHIND, field="external_id"
            )
        return FeedbackItemResult(
            index=index, status=200 if stored.replayed else 201, feedback=stored
        )

    @staticmethod
    def _failed(index: int, error: storage.FeedbackError) -> FeedbackItemResult:
        return FeedbackItemResult(
            index=index, status=status_of(error), error=str(error), field=error.field
        )

    @staticmethod
    def _unreached(
        items: Sequence[tuple[int, storage.FeedbackInput]],
        results: dict[int, FeedbackItemResult],
        why: str,
    ) -> None:
        for index, _ in items:
            results[index] = FeedbackItemResult(index=index, status=503, error=why)

    def _store_pending(
        self,
        pending: list[tuple[int, storage.FeedbackInput]],
        until: float,
        deadline: float,
        results: dict[int, FeedbackItemResult],
    ) -> None:
        """Store the batch's items whose predictions were made moments ago, as their
        log rows arrive, waiting at most once for all of them (and within budget)."""
        while pending:
            waited = self._wait_for_log_rows(min(until, deadline), pause_s=0.2)
            left: list[tuple[int, storage.FeedbackInput]] = []
            for position, (index, item) in enumerate(pending):
                try:
                    results[index] = self._stored(index, item, log_written=True)
                except storage.PredictionNotFound as error:
                    if waited and time.monotonic() < min(until, deadline):
                        left.append((index, item))
                    elif time.monotonic() >= deadline:
                        self._unreached([(index, item)], results, _BUDGET_SPENT)
                    else:
                        results[index] = self._failed(index, error)
                except storage.StoreUnavailable as error:
                    self._unreached(pending[position:], results, str(error))
                    return
                except storage.FeedbackError as error:
                    results[index] = self._failed(index, error)
            pending = left

    def _lookup_window(self, prediction_id: str) -> float | None:
        """Seconds worth waiting for an unknown prediction's log row; None: answer 404 now.

        Only a prediction made moments ago may still wait in a log queue (this
        worker's or another's): its time-ordered id says when it was made, so an
        old, foreign or future id (beyond the replicas' clock skew: no replica made
        it yet) is answered at once instead of holding a thread. A slightly future id
        (another replica's clock ahead) waits at most the lookup wait from now.
        While this worker's log writes fail, a recent prediction may sit in the
        spool: that is a 503 (retry), not a 404.
        """
        created = storage.created_at_of(prediction_id)
        wait_s = self.settings.feedback_lookup_wait_s
        age = time.time() - created if created is not None else None
        if age is None or not -_CLOCK_SKEW_S < age < wait_s + _CLOCK_SKEW_S:
            return None
        if not self.log_writer.healthy:
            raise storage.StoreUnavailable(
                "the prediction log is behind (database writes are failing)"
            )
        return min(wait_s, wait_s + _CLOCK_SKEW_S - age)

    def _start_waiting(self) -> None:
        """Take one of the ``feedback_lookup_waiters`` places of requests that wait for
        log rows (the caller releases it), or refuse with ``StoreUnavailable`` (503):
        requests naming predictions not made yet cannot hold every thread (eight such
        batches stalled all feedback for a minute)."""
        if not self._waiters.acquire(blocking=False):
            raise storage.StoreUnavailable("too many requests wait for predictions to be logged")

    def _wait_for_log_rows(self, until: float, pause_s: float = 0.05) -> bool:
        """Wait (at most until the monotonic time ``until``) for this worker's queued
        log rows to be written, then ``pause_s`` for other workers'; False when there
        is no time left."""
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        if self.log_writer.flush(min(remaining, 0.5)):
            time.sleep(max(0.0, min(pause_s, until - time.monotonic())))
        return True

    def export_feedback(
        self, fmt: ExportFormat, since: datetime | None, until: datetime | None
    ) -> Iterator[str]:
        """Exported feedback as text chunks; the session lives as long as the iteration."""
        with self.sessions() as session:
            rows = store.iter_feedback_export(session=session, since=since, until=until)
            yield from serialize(rows, fmt)

    def experiments_report(
        self, since: datetime | None, until: datetime | None, control: str | None
    ) -> dict[str, Any]:
        default = self.split_default_template()
        with self.sessions() as session:
            report = experiments.build_report(
                session=session,
                since=since or datetime.now(UTC) - REPORT_WINDOW,
                until=until,
                default_template=default,
                control=control,
            )
        body = report.to_dict()
        body["traffic_split"] = self.traffic_split()
        body["decision"] = asdict(self.decision) if self.decision is not None else None
        return body

    def review_queue(
        self,
        limit: int,
        model_version: str | None,
        language: str | None,
        days: float,
        exploration: float,
    ) -> list[dict[str, Any]]:
        # Predictions this worker answered moments ago may still wait in its log queue
        # (written every 0.2 s): write them first, so the queue includes them.
        self.log_writer.flush(0.5)
        with self.sessions() as session:
            items = review_queue(
                session=session,
                since=datetime.now(UTC) - timedelta(days=days),
                limit=limit,
                model_version=model_version,
                language=language,
                exploration=exploration,
            )
        return [item.to_dict() for item in items]

    def split_default_template(self) -> str:
        """The default template version this worker follows."""
        if self.decision is not None:
            return self.decision.template_version
        return self.settings.default_template_version

    def templates(self) -> list[dict[str, Any]]:
        return [self.registry.get(version).to_dict() for version in self.registry.versions]

    def traffic_split(self) -> list[dict[str, Any]]:
        return [
            {"template_version": arm.template_version, "model": arm.model, "share": share}
            for arm, share in zip(self.split.arms, self.split.shares, strict=True)
        ]
