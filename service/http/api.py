"""What the API does, without BentoML: routing, scoring calls, logging, feedback.

``service.bento`` builds one ``SentimentAPI`` per worker and calls it from
thin endpoint methods; ``service.http.errors`` turns the domain errors raised
here into HTTP responses.
"""

from __future__ import annotations

import hashlib
import logging
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
from storage.redaction import redact

logger = logging.getLogger(__name__)

# The experiments report's window when the request names none.
REPORT_WINDOW = timedelta(days=7)
# Allowance for clocks of replicas that disagree, when judging a prediction id's age.
_CLOCK_SKEW_S = 1.0

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
        self.split = self._split(None)
        self.decision: template_decisions.Decision | None = None
        metrics.set_traffic_split(self.traffic_split())

    def _split(self, decision: template_decisions.Decision | None) -> TrafficSplit:
        configured = self.settings.traffic_split if self.settings.traffic_split_configured else None
        arms = serving_arms(configured, self.settings.default_template_version, decision)
        return TrafficSplit(arms, salt=self.settings.routing_salt)

    def refresh_routing(self) -> None:
        """Follow the latest template decision (an experiment concluded or reverted);
        the periodic refresher and the reload endpoint call this."""
        with self.sessions() as session:
            decision = template_decisions.latest(session=session)
        if decision == self.decision:
            return
        if decision is not None and decision.template_version not in self.registry.versions:
            logger.error(
                "template decision %d names unknown version %r; routing unchanged",
                decision.id,
                decision.template_version,
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
        mode = self.settings.text_storage
        if mode == "raw":
            return text
        if mode == "redacted":
            return redact(text)
        return None

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
        routing_hash = (
            hashlib.sha256(request.routing_key.encode()).hexdigest()
            if request.routing_key is not None
            else None
        )
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
                    routing_key_sha256=routing_hash,
                    language=prediction.language,
                    external_id=external_id,
                    external_source=request.source if external_id is not None else None,
                )
                for text, result, prediction, external_id in zip(
                    texts, results, predictions, request.all_external_ids, strict=True
                )
            ]
        )

    async def predict(self, request: PredictRequest, classify: Classify) -> PredictResponse:
        if request.template_version is not None:
            self.registry.get(request.template_version)  # 404 for an unknown version
        route = self.split.choose(request.routing_key, request.template_version)
        texts = request.all_texts
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
                for text in texts
            ]
        )
        latency_ms = (time.perf_counter() - started) * 1000
        predictions: list[Prediction] = []
        for result in results:
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
        item = storage.FeedbackInput(
            prediction_id=request.prediction_id,
            external_id=request.external_id,
            label=request.label,
            verdict=request.verdict,
            comment=self._stored_text(request.comment) if request.comment else None,
            source=request.source,
            idempotency_key=request.idempotency_key,
        )
        started = time.perf_counter()
        flushed = False
        if request.external_id is not None:
            # The latest prediction of a ticket may still wait in this worker's log
            # queue (a ticket scored and labelled moments apart): write it first.
            flushed = self.log_writer.flush(0.5)
        while True:
            try:
                result = store.record_feedback(session_factory=self.sessions, feedback=item)
                break
            except storage.PredictionNotFound:
                assert request.prediction_id is not None
                if not self._wait_for_prediction(request.prediction_id):
                    raise
            except storage.ExternalIdNotFound:
                # A ticket scored moments ago may still wait in this worker's log queue.
                if flushed or not self.log_writer.flush(0.5):
                    raise
                flushed = True
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
        its own status: one bad item never drops the others."""
        results: list[FeedbackItemResult] = []
        for index, body in enumerate(request.items):
            try:
                item = FeedbackRequest.model_validate(body)
            except ValidationError as error:
                first = error.errors()[0]
                field = ".".join(str(part) for part in first["loc"]) or None
                results.append(
                    FeedbackItemResult(index=index, status=400, error=first["msg"], field=field)
                )
                continue
            try:
                stored = self.record_feedback(item)
            except storage.StoreUnavailable as error:
                # Nothing after this item can be stored now either: each says so (503),
                # and the client retries those (idempotency keys make that safe).
                results.extend(
                    FeedbackItemResult(index=rest, status=503, error=str(error))
                    for rest in range(index, len(request.items))
                )
                break
            except storage.FeedbackError as error:
                results.append(
                    FeedbackItemResult(
                        index=index, status=status_of(error), error=str(error), field=error.field
                    )
                )
                continue
            status = 200 if stored.replayed else 201
            results.append(FeedbackItemResult(index=index, status=status, feedback=stored))
        return FeedbackBatchResponse(
            results=results,
            stored=sum(r.status == 201 for r in results),
            replayed=sum(r.status == 200 for r in results),
            failed=sum(r.status >= 400 for r in results),
        )

    def _wait_for_prediction(self, prediction_id: str) -> bool:
        """Whether to look for an unknown prediction again, after a short wait.

        Only a prediction made moments ago may still wait in a log queue (this
        worker's or another's): its time-ordered id says when it was made, so an
        old or foreign id is answered 404 at once instead of holding a thread.
        While this worker's log writes fail, a recent prediction may sit in the
        spool: that is a 503 (retry), not a 404.
        """
        created = storage.created_at_of(prediction_id)
        wait_s = self.settings.feedback_lookup_wait_s
        age = time.time() - created if created is not None else None
        if age is None or not -_CLOCK_SKEW_S < age < wait_s + _CLOCK_SKEW_S:
            return False
        if not self.log_writer.healthy:
            raise storage.StoreUnavailable(
                "the prediction log is behind (database writes are failing)"
            )
        remaining = wait_s + _CLOCK_SKEW_S - age
        if self.log_writer.flush(min(remaining, 0.5)):
            time.sleep(min(0.05, remaining))
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
