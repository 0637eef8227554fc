"""Reads the champion/challenger assignments from the database for the scoring engine."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from service.inference.scoring import AssignmentSource
from storage import model_roles


def database_assignments(session_factory: sessionmaker[Session]) -> AssignmentSource:
    def current(role: str) -> str | None:
        with session_factory() as session:
            return model_roles.current(session=session, role=role)  # type: ignore[arg-type]

    return current
