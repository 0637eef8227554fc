"""Builds and refreshes a ``ScoringEngine`` the same way wherever it runs: in an API
worker's threads or in a model process (``service.inference.model_process``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from model.templates import TemplateRegistry
from service.inference.assignments import database_assignments
from service.inference.scoring import EngineObserver, ScoringEngine


def referenced_models(settings: Settings) -> Sequence[str]:
    return sorted({arm.model for arm in settings.traffic_split})


def load_engine(
    settings: Settings,
    registry: TemplateRegistry,
    sessions: sessionmaker[Session],
    observer: EngineObserver | None = None,
) -> ScoringEngine:
    """An engine following the database's model assignments, with every model the
    traffic split references loaded (before the first request)."""
    threads = settings.resolved_inference_threads
    if threads:
        torch.set_num_threads(threads)
    engine = ScoringEngine(settings, registry, database_assignments(sessions), observer=observer)
    engine.load(referenced_models(settings))
    return engine


def refresh_report(engine: ScoringEngine) -> dict[str, Any]:
    """Switch to newly assigned models; what changed and what serves now."""
    changes = engine.refresh()
    return {"changes": changes, **engine.describe()}
