"""The models of one API worker: scoring engine, batcher and model watcher together.

Every worker holds its own copy of the models it serves (a few tens of MB for
the default int8 ONNX model), batches its own requests (``MicroBatcher``) and
polls the database for a new champion/challenger every
``model_poll_interval_s`` seconds, swapping without a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from sentiloop.settings import Settings
from service.assignments import database_assignments
from service.batching import MicroBatcher
from service.metrics import ModelMetrics
from service.periodic import PeriodicTask
from service.scoring import ScoreItem, ScoreResult, ScoringEngine
from service.templates import TemplateRegistry


def referenced_models(settings: Settings) -> Sequence[str]:
    return sorted({arm.model for arm in settings.traffic_split})


class InferenceWorker:
    def __init__(
        self,
        settings: Settings,
        registry: TemplateRegistry,
        sessions: sessionmaker[Session],
        metrics: ModelMetrics,
    ) -> None:
        threads = settings.resolved_inference_threads
        if threads:
            torch.set_num_threads(threads)
        self.engine = ScoringEngine(
            settings, registry, database_assignments(sessions), observer=metrics
        )
        self.engine.load(referenced_models(settings))  # before the first request
        self.batcher = MicroBatcher(
            self.engine.score,
            max_batch_texts=settings.max_batch_texts,
            max_queued_texts=settings.max_queued_texts,
            concurrent_batches=settings.resolved_concurrent_batches,
            observer=metrics,
        )
        self.watcher = PeriodicTask(
            "model-watcher", self.engine.refresh, settings.model_poll_interval_s, run_first=False
        )
        self.watcher.start()

    async def classify(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        return await self.batcher.classify(items)

    def describe(self) -> dict[str, Any]:
        return self.engine.describe()

    async def reload(self) -> dict[str, Any]:
        """Check the database for a new champion/challenger now (this worker)."""
        changes = await asyncio.to_thread(self.engine.refresh)
        return {"changes": changes, **self.engine.describe()}

    def close(self) -> None:
        self.watcher.stop()
        self.batcher.close()
