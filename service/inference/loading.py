"""Builds and refreshes a ``Scorer`` the same way wherever it runs (in an API
worker's threads or in a model process, ``service.inference.model_process``),
following the champion/challenger roles recorded in the database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from model.templates import TemplateRegistry
from service.inference.scoring import AssignmentSource, Scorer, ScorerObserver
from storage import model_roles


def database_assignments(session_factory: sessionmaker[Session]) -> AssignmentSource:
    """Reads the model tag holding a role from the database."""

    def current(role: str) -> str | None:
        with session_factory() as session:
            return model_roles.current(session=session, role=role)  # type: ignore[arg-type]

    return current


def referenced_models(settings: Settings) -> Sequence[str]:
    return sorted({arm.model for arm in settings.traffic_split})


def load_scorer(
    settings: Settings,
    registry: TemplateRegistry,
    sessions: sessionmaker[Session],
    observer: ScorerObserver | None = None,
) -> Scorer:
    """An scorer following the database's model assignments, with every model the
    traffic split references loaded (before the first request)."""
    scorer = Scorer(settings, registry, database_assignments(sessions), observer=observer)
    scorer.load(referenced_models(settings))
    return scorer


def refresh_report(scorer: Scorer) -> dict[str, Any]:
    """Switch to newly assigned models; what changed and what serves now."""
    changes = scorer.refresh()
    return {"changes": changes, **scorer.describe()}
