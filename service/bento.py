"""The BentoML services: thin shells over ``ScoringEngine`` and ``SentimentAPI``.

* ``SentimentModel`` holds the models and exposes one batchable ``classify``
  endpoint (BentoML's adaptive batching groups concurrent requests).
* ``SentiLoop`` is the public API: ``POST /v1/predict``, ``POST /v1/feedback``,
  and the read endpoints under ``/v1`` (a mounted FastAPI app). It calls the
  model service through ``bentoml.depends``.

Serve with ``bentoml serve service.bento:SentiLoop`` (or ``sentiloop serve``).
"""

from datetime import UTC, datetime
from typing import Any, Literal

import bentoml
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

import feedback
from feedback.export import MEDIA_TYPES
from sentiloop.logging_setup import configure_logging
from sentiloop.settings import Settings
from service.api_logic import SentimentAPI, referenced_models
from service.assignments import database_assignments
from service.http_errors import DOMAIN_ERRORS, error_response
from service.http_guard import GuardConfig, GuardMiddleware
from service.metrics import ApiMetrics, ModelMetrics
from service.periodic import PeriodicTask
from service.schemas import (
    FeedbackRequest,
    FeedbackResponse,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
)
from service.scoring import ScoreItem, ScoreResult, ScoringEngine
from service.templates import TemplateRegistry, UnknownTemplateVersion

read_api = FastAPI(title="sentiloop", description="Read endpoints of sentiloop.")


@read_api.exception_handler(RequestValidationError)
async def _bad_query(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    field = ".".join(str(part) for part in errors[0]["loc"][1:]) if errors else None
    return JSONResponse(
        {"error": f"{len(errors)} validation error(s)", "field": field, "detail": errors},
        status_code=400,
    )


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# BentoML's client to a dependency replaces its HTTP session every `max_requests`
# requests or `max_age` seconds and closes the old one with requests still in
# flight on it, which fails them under concurrency; so the session is kept.
_KEEP_DEPENDENCY_SESSION = {"max_requests": 2**62, "max_age": 10.0**12}


@bentoml.service(
    name="sentiloop-model",
    traffic={"timeout": 60},
    runner_connection=_KEEP_DEPENDENCY_SESSION,
)
class SentimentModel:
    def __init__(self) -> None:
        settings = Settings()
        configure_logging()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        database_url = settings.resolved_database_url
        feedback.wait_for_schema(database_url, timeout_s=120)  # the API service migrates
        self.db = feedback.make_engine(database_url)
        registry = TemplateRegistry.load(settings.resolved_templates_dir)
        self.metrics = ModelMetrics()
        self.engine = ScoringEngine(
            settings,
            registry,
            database_assignments(feedback.make_session_factory(self.db)),
            observer=self.metrics,
        )
        self.engine.load(referenced_models(settings))
        self.watcher = PeriodicTask(
            "model-watcher", self.engine.refresh, settings.model_poll_interval_s, run_first=False
        )
        self.watcher.start()

    @bentoml.on_shutdown
    def close(self) -> None:
        self.watcher.stop()
        self.db.dispose()

    # max_latency_ms is a hard limit: BentoML answers 503 to requests it expects to
    # exceed it, so it is set to what a client would rather wait than be refused.
    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def classify(self, items: list[ScoreItem]) -> list[ScoreResult]:
        self.metrics.batch_size.observe(len(items))
        return self.engine.score(items)

    @bentoml.api
    def models(self) -> dict[str, Any]:
        return self.engine.describe()

    @bentoml.api
    def reload(self) -> dict[str, Any]:
        """Check the database for a new champion/challenger now."""
        changes = self.engine.refresh()
        return {"changes": changes, **self.engine.describe()}


@bentoml.service(name="sentiloop", traffic={"timeout": 60})
@bentoml.asgi_app(read_api, path="/v1")
class SentiLoop:
    scorer = bentoml.depends(SentimentModel)

    def __init__(self) -> None:
        settings = Settings()
        configure_logging()
        registry = TemplateRegistry.load(settings.resolved_templates_dir)
        GuardConfig.from_settings(settings)  # fail at start-up on a bad or missing key ring
        self.api = SentimentAPI(settings, registry, ApiMetrics())

    def __is_ready__(self) -> bool:
        return self.api.is_ready()

    @bentoml.on_shutdown
    def close(self) -> None:
        self.api.close()

    @bentoml.api(route="/v1/predict", input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, **fields: Any) -> PredictResponse | Response:
        """Score one text or up to 256 texts for sentiment."""
        try:
            return await self.api.predict(
                PredictRequest.model_construct(**fields), self.scorer.to_async.classify
            )
        except DOMAIN_ERRORS as error:
            return error_response(error)

    @bentoml.api(route="/v1/feedback", input_spec=FeedbackRequest, output_spec=FeedbackResponse)
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
        described = await self.scorer.to_async.models()
        return ModelsResponse(**described, traffic_split=self.api.traffic_split())

    @bentoml.api(route="/v1/admin/reload-models", output_spec=ModelsResponse)
    async def reload_models(self) -> ModelsResponse:
        """Switch to a newly promoted model now (admin scope)."""
        described = await self.scorer.to_async.reload()
        return ModelsResponse(**described, traffic_split=self.api.traffic_split())

    @read_api.get("/feedback/export")
    def export_feedback(
        self,
        format: Literal["jsonl", "csv"] = "jsonl",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> StreamingResponse:
        return StreamingResponse(
            self.api.export_feedback(format, _utc(since), _utc(until)),
            media_type=MEDIA_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="feedback.{format}"'},
        )


SentiLoop.add_asgi_middleware(GuardMiddleware)  # type: ignore[attr-defined]
