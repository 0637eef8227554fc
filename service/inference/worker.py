"""The models of one API worker: scorers, batcher and model watcher together.

Two layouts, both behind one adaptive batcher (``MicroBatcher``):

* model processes (the CPU default, ``service.inference.model_process``): each holds its
  own scorer and copy of the models (a few tens of MB for the default int8
  ONNX model) and runs one single-threaded model call at a time;
* in-worker (``SENTILOOP_MODEL_PROCESSES=0``, the GPU default): one scorer in
  the worker, ``concurrent_batches`` model calls in its threads.

Every ``model_poll_interval_s`` seconds the watcher asks each scorer to look
for a new champion/challenger in the database and swap without a restart; a
model process swaps between two batches, the others keep serving meanwhile.
A model process being restarted is skipped (it starts with the current
models), and ``describe`` answers from what each process last reported, so
neither waits on a process that is down.

The models load in the background (``model-start``): the service's
``__init__`` returns at once, so the server accepts connections while they
load, and ``classify`` refuses texts with ``ModelsStarting`` (503 with
Retry-After) until they serve. Holding a request until the models were up (a
minute on a cold cache) outlasted clients' timeouts, and the request was then
scored and logged after its client had given up: a retrying client made
duplicates.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from model.templates import TemplateRegistry
from service.inference.batching import MicroBatcher, ModelSlot, ThreadSlot
from service.inference.loading import load_scorer, refresh_report
from service.inference.model_process import ModelProcess
from service.inference.scoring import ModelUnavailable, ScoreItem, Scorer, ScoreResult
from service.metrics import ModelMetrics
from service.periodic import PeriodicTask

logger = logging.getLogger(__name__)

# Long enough for a model process to start and load its models (an ONNX export
# on a machine's first start included); a refresh may load a model too.
MODEL_PROCESS_START_TIMEOUT_S = 600.0
# Batches a model process holds at once: one running, the next waiting in its socket
# (service.inference.batching). Threads of the worker take one.
MODEL_PROCESS_DEPTH = 2
# A request of this many texts or more, alone in the queue, is cut between the idle
# model processes (service.inference.batching). Measured (wrk, shipped model, 2 cores,
# one request in flight): 12 texts 340 -> 482 texts/s, 32 texts 383 -> 560; at 8
# texts cut or not alike (415 and 416), so two chunks of 4 is where cutting starts.
SPLIT_TEXTS = 8


class ModelsStarting(ModelUnavailable):
    """The models are still loading (the server has just started), or failed to."""


class InferenceWorker:
    def __init__(
        self,
        settings: Settings,
        registry: TemplateRegistry,
        sessions: sessionmaker[Session],
        metrics: ModelMetrics,
        *,
        on_failed_start: Callable[[], None] | None = None,
    ) -> None:
        """Starts the model processes (or the in-worker scorer) loading, without
        waiting: see ``ready``. ``on_failed_start`` runs (in the loading thread)
        when the models cannot load."""
        self._metrics = metrics
        self._on_failed_start = on_failed_start
        self._processes: list[ModelProcess] = []
        self._scorer: Scorer | None = None
        self._ready = False
        self.start_error: str | None = None
        slots: list[ModelSlot]
        processes = settings.resolved_model_processes
        if processes:
            self._processes = [
                ModelProcess(
                    settings,
                    str(index),
                    start_timeout_s=MODEL_PROCESS_START_TIMEOUT_S,
                    call_timeout_s=settings.model_call_timeout_s,
                    on_restart=metrics.process_restarted,
                )
                for index in range(processes)
            ]
            slots = list(self._processes)
        else:
            slots = [
                ThreadSlot(self._score_in_thread, f"inference-{index}")
                for index in range(settings.concurrent_batches)
            ]
        self.batcher = MicroBatcher(
            slots,
            max_batch_texts=settings.max_batch_texts,
            max_queued_texts=settings.max_queued_texts,
            observer=metrics,
            depth=MODEL_PROCESS_DEPTH if processes else 1,
            split_texts=SPLIT_TEXTS if processes else None,
        )
        self.watcher = PeriodicTask(
            "model-watcher", self._refresh, settings.model_poll_interval_s, run_first=False
        )
        self._starter = threading.Thread(
            target=self._start,
            args=(settings, registry, sessions),
            name="model-start",
            daemon=True,
        )
        self._starter.start()

    def _start(
        self, settings: Settings, registry: TemplateRegistry, sessions: sessionmaker[Session]
    ) -> None:
        """Wait for the models to load (in the background), then serve and watch."""
        try:
            if self._processes:
                for process in self._processes:  # all start at once; wait for each
                    self._report(process.wait_started())
            else:
                self._scorer = load_scorer(settings, registry, sessions, observer=self._metrics)
                gc.collect()
                gc.freeze()  # the models too (see service.bento)
        except Exception as exc:
            self.start_error = f"the models failed to load: {exc}"
            logger.exception("the models failed to load; this worker will not serve")
            if self._on_failed_start is not None:
                self._on_failed_start()
            return
        self._ready = True
        logger.info("models loaded; serving")
        self.watcher.start()

    @property
    def ready(self) -> bool:
        """Whether the models serve (False while they load, and after a failed start)."""
        return self._ready

    def _score_in_thread(self, items: Sequence[ScoreItem], *, alone: bool) -> list[ScoreResult]:
        assert self._scorer is not None, "classify refuses texts until the scorer is loaded"
        return self._scorer.score(items, alone=alone)

    async def classify(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        if not self._ready:
            raise ModelsStarting(self.start_error or "the models are loading; retry shortly")
        return await self.batcher.classify(items)

    def describe(self) -> dict[str, Any]:
        """What serves now (never waits on a model process)."""
        if self._scorer is not None:
            return self._scorer.describe()
        reported = [p.described for p in self._processes if p.described is not None]
        described = dict(reported[0]) if reported else {"models": []}
        down = [p.name for p in self._processes if not p.available]
        if down:
            described["restarting_model_processes"] = down
        return described

    async def reload(self) -> dict[str, Any]:
        """Check the database for a new champion/challenger now (every scorer of this
        worker); refused while the models load (they load the current ones)."""
        if not self._ready:
            raise ModelsStarting(self.start_error or "the models are loading; retry shortly")
        return await asyncio.to_thread(self._refresh)

    def _refresh(self) -> dict[str, Any]:
        if self._scorer is not None:
            return refresh_report(self._scorer)
        # One process at a time: the others keep scoring while one loads a model.
        reports = []
        for process in self._processes:
            try:
                reports.append(self._report(process.call("refresh", MODEL_PROCESS_START_TIMEOUT_S)))
            except ModelUnavailable as exc:
                logger.warning("model refresh skipped: %s", exc)
        if not reports:
            return {**self.describe(), "changes": []}
        changes = sorted({change for report in reports for change in report["changes"]})
        return {**self.describe(), "changes": changes}

    def _report(self, described: dict[str, Any]) -> dict[str, Any]:
        """Mirror what a model process serves in this worker's metrics."""
        for model in described["models"]:
            self._metrics.model_serving(
                model["reference"], model["model_version"], model["kind"], model["metadata"]
            )
        if described.get("last_refresh_error") and described.get("changes") is not None:
            self._metrics.load_failed()
        return described

    def close(self) -> None:
        self.watcher.stop()
        self.batcher.close()
