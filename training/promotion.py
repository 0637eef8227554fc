"""Manual promotion and rollback of models (each appends to the assignment history)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from model import model_store
from storage import model_roles


class PromotionError(ValueError):
    pass


def promote(*, sessions: sessionmaker[Session], tag: str, reason: str) -> model_roles.Assignment:
    """Make a stored model the champion."""
    stored = model_store.get_model(tag)  # ModelNotFound for a tag that is not in the store
    with sessions() as session:
        assignment = model_roles.assign(
            session=session, role="champion", model_tag=stored.tag, reason=reason
        )
        session.commit()
    return assignment


def rollback(*, sessions: sessionmaker[Session], tag: str | None = None) -> model_roles.Assignment:
    """Make ``tag`` champion again, or, without a tag, the champion before the current one."""
    with sessions() as session:
        current = model_roles.current(session=session, role="champion")
        if tag is None:
            earlier = [
                a.model_tag
                for a in model_roles.history(session=session, role="champion", limit=1000)
                if a.model_tag != current
            ]
            if not earlier:
                raise PromotionError("there is no earlier champion to roll back to")
            tag = earlier[0]
    if tag is None:
        with sessions() as session:
            assignment = model_roles.assign(
                session=session,
                role="champion",
                model_tag=None,
                reason=f"rollback from {current} to the zero-shot model",
            )
            session.commit()
        return assignment
    return promote(sessions=sessions, tag=tag, reason=f"rollback from {current} to {tag}")
