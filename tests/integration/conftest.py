from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

import storage
from core import database
from service.metrics import ApiMetrics, WebhookMetrics


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated database: a real SQLite file, then a real PostgreSQL."""
    storage.upgrade(database_url)
    engine = database.make_engine(database_url)
    yield database.make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def api_metrics() -> ApiMetrics:
    """The service's metrics: one per process (they register once)."""
    return ApiMetrics()


@pytest.fixture(scope="session")
def webhook_metrics() -> WebhookMetrics:
    """The webhook and write-back metrics: one per process (they register once)."""
    return WebhookMetrics()
