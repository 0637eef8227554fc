"""The BentoML service: a thin shell over ``SentimentAPI`` and ``InferenceWorker``.

``SentiLoop`` is the public API: ``POST /v1/predict``, ``POST /v1/feedback``,
and the read endpoints under ``/v1`` (a mounted FastAPI app). Each worker
scores with its own models through an adaptive batcher (``service.inference.batching``).

Serve with ``bentoml serve service.bento:SentiLoop`` (or ``sentiloop serve``).
"""

import asyncio
import gc
import os
import signal
from datetime import timedelta
from typing import Annotated, Any, Literal

import bentoml
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

import storage
from core import database
from core.logs import configure_logging
from core.processes import stop_with_parent
from core.settings import Settings
from feedback.review_queue import DEFAULT_EXPLORATION
from model.model_store import use_store
from model.templates import TemplateRegistry, UnknownTemplateVersion
from service.http.api import SentimentAPI
from service.http.docs import DocsPage
from service.http.errors import DOMAIN_ERRORS, RETRY_AFTER_S, error_response
from service.http.guard import GuardConfig, GuardConfigSlot, GuardMiddleware
from service.http.inbox import InboxScorer
from service.http.json_errors import JsonErrorsMiddleware
from service.http.paths import RouteLabelPaths
from service.http.schemas import (
    MAX_REVIEW_ITEMS,
    FeedbackBatchRequest,
    FeedbackBatchResponse,
    FeedbackBody,
    FeedbackRequest,
    FeedbackResponse,
    ModelsResponse,
    Moment,
    PredictRequest,
    PredictResponse,
)
from service.http.shutdown import Drain
from service.http.validation import FieldNamingMiddleware
from service.http.webhooks import WebhookReceiver
from service.http.writeback import WriteBackSender
from service.inference.worker import InferenceWorker
from service.metrics import ApiMetrics, ModelMetrics, WebhookMetrics
from service.monitoring import refresh_gauges
from service.periodic import PeriodicTask
from storage import retention, store
from storage.export import MEDIA_TYPES

# One per worker process: SIGTERM is a process-wide event, and the guard is
# created by BentoML before the service builds its settings.
_DRAIN = Drain()
_GUARD = GuardConfigSlot()


def _restart_worker() -> None:
    """End this worker when its models fail to load, as an exception in ``__init__``
    did before they loaded in the background: BentoML's arbiter starts it again."""
    os.kill(os.getpid(), signal.SIGTERM)


# No /v1/docs or /v1/redoc: FastAPI's pages load their scripts from a CDN (the UI
# is at /docs, see service.http.docs); the spec stays at /v1/openapi.json.
read_api = FastAPI(
    title="sentiloop",
    description="Read endpoints of sentiloop.",
    docs_url=None,
    redoc_url=None,
)


@read_api.exception_handler(RequestValidationError)
async def _bad_query(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    field = ".".join(str(part) for part in errors[0]["loc"][1:]) if errors else None
    # As a body's 400 says it (service.http.validation): "field: message".
    first = str(errors[0]["msg"]).removeprefix("Value error, ") if errors else "invalid"
    more = f" (and {len(errors) - 1} more in 'detail')" if len(errors) > 1 else ""
    # A validator's ValueError rides in each error's ``ctx``: encoded, not a 500.
    return JSONResponse(
        {
            "error": f"{field}: {first}{more}" if field else f"{first}{more}",
            "field": field,
            "detail": jsonable_encoder(errors),
        },
        status_code=400,
    )


# Per-request overheads kept off the hot path (README, "Performance"): an
# access-log line per request cost ~10% of a worker's throughput and the
# OpenTelemetry spans of /v1/predict ~20% (the request metrics on /metrics carry
# the same figures). Operators who want them back override these defaults, e.g.
# BENTOML_CONFIG_OPTIONS='services.sentiloop.logging.access.enabled=true
# services.sentiloop.tracing.excluded_urls=/readyz'.
@bentoml.service(
    name="sentiloop",
    # Threads for the synchronous endpoints (feedback, export, templates): with
    # BentoML's default of one, feedback requests queued behind each other.
    threads=8,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/v1/predict"]},
)
@bentoml.asgi_app(read_api, path="/v1")
class SentiLoop:
    def __init__(self) -> None:
        """Build every part once, from one settings object, and pass them down."""
        settings = Settings()
        use_store(settings.resolved_bentoml_home)  # before anything reads the model store
        configure_logging()
        _DRAIN.install(settings.shutdown_drain_s)
        stop_with_parent()  # an arbiter SIGKILLed leaves no worker holding the port
        _GUARD.config = GuardConfig.from_settings(settings)  # fails on a bad key ring
        registry = TemplateRegistry.load(settings.resolved_templates_dir)
        url = settings.resolved_database_url
        if settings.auto_migrate:
            storage.upgrade(url)
        self.database_engine = database.make_engine(url)
        sessions = database.make_session_factory(self.database_engine)
        api_metrics = ApiMetrics()
        self.log_writer = storage.PredictionLogWriter(
            sessions,
            queue_size=settings.log_queue_size,
            batch_size=settings.log_batch_size,
            flush_interval_s=settings.log_flush_interval_s,
            observer=api_metrics,
            spool=storage.Spool(settings.spool_dir),
        )
        self.log_writer.start()
        window = timedelta(seconds=settings.feedback_accuracy_window_s)
        self.gauges = PeriodicTask(
            "gauge-refresher",
            lambda: refresh_gauges(api_metrics, sessions, window),
            settings.metrics_refresh_interval_s,
            run_first=True,
        )
        self.gauges.start()
        self.api = SentimentAPI(
            settings,
            registry,
            api_metrics,
            database_engine=self.database_engine,
            sessions=sessions,
            log_writer=self.log_writer,
        )
        self.routing = PeriodicTask(
            "routing-refresher",
            self.api.refresh_routing,
            settings.model_poll_interval_s,
            run_first=True,
        )
        self.routing.start()
        # The models load in the background: requests meanwhile get 503 at once.
        self.inference = InferenceWorker(
            settings, registry, sessions, ModelMetrics(), on_failed_start=_restart_worker
        )
        # CRM webhooks: stored in the inbox at once, scored by /v1/predict's path after.
        # Labels written back to the tickets from the outbox (off per connector by default).
        webhook_metrics = WebhookMetrics()
        self.writeback = WriteBackSender.from_settings(settings, sessions, webhook_metrics)
        self.inbox = InboxScorer(
            sessions,
            lambda request: self.api.predict(request, self.inference.classify),
            webhook_metrics,
            serving=lambda: self.inference.ready,
            poll_interval_s=settings.webhook_inbox_poll_interval_s,
            writes_back=self.writeback.connectors,
            on_writeback=self.writeback.wake,
            # CRM feedback (SENTILOOP_WEBHOOK_FEEDBACK) goes in by /v1/feedback's path.
            record_feedback=self.api.record_feedback,
        )
        self.webhooks = WebhookReceiver(
            settings, sessions, webhook_metrics, on_stored=self.inbox.wake
        )
        # Handled inbox and outbox rows deleted once past their retention.
        self.webhook_retention = PeriodicTask(
            "webhook-retention",
            lambda: retention.purge_webhook_rows(
                sessions,
                retention_days=settings.webhook_retention_days,
                dead_letter_retention_days=settings.webhook_dead_letter_retention_days,
            ),
            retention.PURGE_INTERVAL_S,
            run_first=True,
        )
        self.webhook_retention.start()
        # Exempt everything loaded so far (torch, transformers, the models: about a
        # million objects) from garbage collection: a full collection scanning them
        # paused the worker for hundreds of milliseconds under load.
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return not _DRAIN.draining and self.inference.ready and self.api.is_ready()

    @bentoml.on_startup
    async def start_inbox(self) -> None:
        """The inbox and write-back workers run on the server's event loop (the
        batcher's)."""
        self.inbox.start()
        self.writeback.start()

    @bentoml.on_shutdown
    def close(self) -> None:
        """Stop in the reverse order of building: the webhook retention, the inbox and
        write-back workers, models, gauges, the log (flushed), the database."""
        self.webhook_retention.stop()
        self.inbox.close()
        self.writeback.close()
        self.inference.close()
        self.routing.stop()
        self.gauges.stop()
        self.log_writer.close()
        self.database_engine.dispose()

    @bentoml.api(route="/v1/predict", input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, **fields: Any) -> PredictResponse | Response:
        """Score one text or up to 256 texts for sentiment."""
        try:
            return await self.api.predict(
                PredictRequest.model_construct(**fields), self.inference.classify
            )
        except DOMAIN_ERRORS as error:
            return error_response(error)

    # FeedbackBody: FeedbackRequest, its JSON parsed so that every field's error names it.
    @bentoml.api(route="/v1/feedback", input_spec=FeedbackBody, output_spec=FeedbackResponse)
    def feedback(self, ctx: bentoml.Context, **fields: Any) -> FeedbackResponse | Response:
        """Record a corrected label or a verdict on a prediction (201; 200 on a replay)."""
        try:
            result = self.api.record_feedback(FeedbackRequest.model_construct(**fields))
        except DOMAIN_ERRORS as error:
            response = error_response(error)
            ctx.response.status_code = response.status_code  # BentoML applies ctx's status
            return response
        ctx.response.status_code = 200 if result.replayed else 201
        return result

    @bentoml.api(
        route="/v1/feedback/batch",
        input_spec=FeedbackBatchRequest,
        output_spec=FeedbackBatchResponse,
    )
    def feedback_batch(self, ctx: bentoml.Context, **fields: Any) -> FeedbackBatchResponse:
        """Record up to 1,000 pieces of feedback, each with its own status (201, 200 on
        a replay, 400, 404, 409, 503): the others are stored whatever one of them gets.
        An answer with 503 items carries ``Retry-After``, as a 503 answer does."""
        result = self.api.record_feedback_batch(FeedbackBatchRequest.model_construct(**fields))
        if any(item.status == 503 for item in result.results):
            ctx.response.headers["Retry-After"] = RETRY_AFTER_S
        return result

    @read_api.post("/webhooks/{connector}", status_code=202)
    async def webhook(self, connector: str, request: Request) -> Response:
        """A CRM's signed webhook delivery (zendesk, hubspot, intercom, salesforce,
        generic): stored, answered 202 (200 when nothing new; Salesforce: its SOAP
        acknowledgement), scored right after under the ticket's id."""
        return await self.webhooks.receive(connector, request)

    @read_api.get("/templates")
    def list_templates(self) -> dict[str, Any]:
        return {"templates": self.api.templates(), "traffic_split": self.api.traffic_split()}

    @read_api.get("/templates/{version}")
    def show_template(self, version: str) -> Any:
        try:
            return self.api.registry.get(version).to_dict()
        except UnknownTemplateVersion as error:
            return error_response(error)

    @read_api.get("/models")
    async def list_models(self) -> ModelsResponse:
        described = self.inference.describe()
        return ModelsResponse(**described, traffic_split=self.api.traffic_split())

    @bentoml.api(route="/v1/admin/reload-models", output_spec=ModelsResponse)
    async def reload_models(self) -> ModelsResponse | Response:
        """Switch this worker to a newly promoted model now (admin scope); the other
        workers follow within `model_poll_interval_s`."""
        try:
            described = await self.inference.reload()
        except DOMAIN_ERRORS as error:  # the models are still loading: 503 at once
            return error_response(error)
        await asyncio.to_thread(self.api.refresh_routing)
        return ModelsResponse(**described, traffic_split=self.api.traffic_split())

    @read_api.get("/experiments")
    def experiments(
        self,
        since: Moment | None = None,
        until: Moment | None = None,
        control: str | None = None,
    ) -> Any:
        """The A/B report over predictions made in [since, until) (default: the last
        7 days): per arm, agreement with a 95% interval; per arm against the control,
        the difference, its interval, a two-sided test and a verdict."""
        try:
            since, until = store.utc_bounds(since, until)
            return self.api.experiments_report(since, until, control)
        except DOMAIN_ERRORS as error:
            return error_response(error)

    @read_api.get("/review-queue")
    def review_queue(
        self,
        limit: Annotated[int, Query(ge=1, le=MAX_REVIEW_ITEMS)] = 50,
        model_version: Annotated[str | None, Query(max_length=200)] = None,
        language: Annotated[str | None, Query(pattern=r"^[a-z]{2,3}$")] = None,
        # ge, not gt: BentoML labels its spec OpenAPI 3.0 (no numeric exclusiveMinimum).
        days: Annotated[float, Query(ge=0.01, le=365)] = 30.0,
        exploration: Annotated[float, Query(ge=0, le=1)] = DEFAULT_EXPLORATION,
    ) -> dict[str, Any]:
        """Logged predictions that most need a human label (admin scope: texts leave
        the service): uncertain first, then a share drawn at random (`exploration`),
        no near-duplicates, not labelled yet."""
        items = self.api.review_queue(limit, model_version, language, days, exploration)
        return {"items": items}

    @read_api.get("/feedback/export")
    def export_feedback(
        self,
        format: Literal["jsonl", "csv"] = "jsonl",
        since: Moment | None = None,
        until: Moment | None = None,
    ) -> Response:
        try:
            since, until = store.utc_bounds(since, until)
        except DOMAIN_ERRORS as error:
            return error_response(error)
        return StreamingResponse(
            self.api.export_feedback(format, since, until),
            media_type=MEDIA_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="feedback.{format}"'},
        )


SentiLoop.add_asgi_middleware(GuardMiddleware, slot=_GUARD)  # type: ignore[attr-defined]
SentiLoop.add_asgi_middleware(FieldNamingMiddleware)  # type: ignore[attr-defined]
SentiLoop.add_asgi_middleware(JsonErrorsMiddleware)  # type: ignore[attr-defined]


class _WrappedService(type(SentiLoop)):  # type: ignore[misc]
    """The BentoML service, its ASGI app wrapped outside BentoML's own middleware:
    in ``RouteLabelPaths`` (BentoML's metrics label requests by path) and in the
    drain (``Connection: close`` once SIGTERM arrived); ``/docs`` and ``/`` answered
    by ``DocsPage`` (no third-party script)."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        return RouteLabelPaths(_DRAIN.wrap(DocsPage(super().to_asgi(is_main))))


SentiLoop.__class__ = _WrappedService  # type: ignore[method-assign]
