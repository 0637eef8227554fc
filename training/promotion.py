"""Manual promotion and rollback of models (each appends to the assignment history)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from model import shared_store
from model.loader import cold_start_tag, prepare_model, resolve_tag
from storage import model_roles


class PromotionError(ValueError):
    pass


def promote(
    *, settings: Settings, sessions: sessionmaker[Session], tag: str, reason: str
) -> model_roles.Assignment:
    """Make a model the champion: one in the store, or a shipped one (``shipped`` or
    its version). ModelNotFound, naming the store, for one the server cannot load. With
    a shared model store the model is uploaded first, so that every replica can load it
    once it sees the role."""
    resolved = resolve_tag(settings, tag)
    shared_store.publish(settings, resolved)
    prepare_model(settings, resolved)
    with sessions() as session:
        assignment = model_roles.assign(
            session=session, role="champion", model_tag=resolved, reason=reason
        )
        session.commit()
    return assignment


def rollback(
    *, settings: Settings, sessions: sessionmaker[Session], tag: str | None = None
) -> model_roles.Assignment:
    """Make ``tag`` champion again, or, without a tag, the champion before the current
    one; before the first promotion that is the cold-start model (the shipped model, or
    the zero-shot model where the base preset has none)."""
    cold_start = cold_start_tag(settings)
    with sessions() as session:
        current = model_roles.current(session=session, role="champion") or cold_start
        if tag is None:
            history = model_roles.history(session=session, role="champion", limit=1000)
            earlier = [
                a.model_tag or cold_start for a in history if (a.model_tag or cold_start) != current
            ]
            if not earlier and current == cold_start:
                raise PromotionError("there is no earlier champion to roll back to")
            tag = earlier[0] if earlier else cold_start
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
    return promote(
        settings=settings, sessions=sessions, tag=tag, reason=f"rollback from {current} to {tag}"
    )
