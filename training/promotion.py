"""Manual promotion and rollback of models (each appends to the assignment history),
and the pruning of the shared model store down to what they may need."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from model import shared_store
from model.loader import cold_start_tag, prepare_model, resolve_tag
from storage import model_roles

logger = logging.getLogger(__name__)

# What the shared store keeps by default: the last five champions (rollback targets),
# and anything published in the last day (a model uploaded before its assignment).
KEEP_CHAMPIONS = 5
KEEP_PUBLISHED_WITHIN = timedelta(days=1)


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


@dataclass
class PrunePlan:
    """The published models of a shared store: kept (tag -> why) and deleted."""

    store: str
    kept: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


def prune_shared_store(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    keep_champions: int = KEEP_CHAMPIONS,
    keep_within: timedelta = KEEP_PUBLISHED_WITHIN,
    dry_run: bool = False,
) -> PrunePlan | None:
    """Delete the published versions of ``settings.model_name`` that nothing needs:
    kept are the champion and the challenger, the last ``keep_champions`` champions
    (what ``rollback`` goes back to), anything published within ``keep_within`` (a
    trainer uploads a model before it assigns the role) and the parents of every kept
    delta or correction. None without a shared store. A model deleted here and
    promoted later is uploaded again from the local store that has it."""
    shared = shared_store.SharedStore.from_settings(settings)
    if shared is None:
        return None
    plan = PrunePlan(store=shared.url)
    with sessions() as session:
        for role in ("champion", "challenger"):
            if (tag := model_roles.current(session=session, role=role)) is not None:
                plan.kept.setdefault(tag, role)
        champions: list[str] = []
        for assignment in model_roles.history(session=session, role="champion", limit=1000):
            if assignment.model_tag is not None and assignment.model_tag not in champions:
                champions.append(assignment.model_tag)
    for tag in champions[:keep_champions]:
        plan.kept.setdefault(tag, f"one of the last {keep_champions} champions")
    published = shared.published(settings.model_name)
    recent = datetime.now(UTC) - keep_within
    for tag, when in published.items():
        if when >= recent:
            plan.kept.setdefault(tag, f"published within {keep_within}")
    for tag in list(plan.kept):  # the chains the kept models are rebuilt from
        parent = shared.parent(tag)
        while parent is not None and parent in published and parent not in plan.kept:
            plan.kept[parent] = f"the parent of {tag}"
            parent = shared.parent(parent)
    plan.kept = {tag: why for tag, why in plan.kept.items() if tag in published}
    plan.deleted = sorted(tag for tag in published if tag not in plan.kept)
    if not dry_run:
        for tag in plan.deleted:
            objects = shared.delete(tag)
            logger.info("deleted %s from %s (%d objects)", tag, shared.url, objects)
    return plan
