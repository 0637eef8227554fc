"""Runs the Alembic migrations shipped in ``feedback/migrations``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from feedback.db import make_engine
from sentiloop.file_lock import exclusive_file_lock

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@contextlib.contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """Serialize migrations of one SQLite file across processes (PostgreSQL uses an
    advisory lock in env.py instead)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        yield
        return
    with exclusive_file_lock(Path(f"{parsed.database}.migrate.lock")):
        yield


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating the SQLite file if needed).

    Safe to call from several processes at once (workers, replicas).
    """
    with _sqlite_file_lock(url):
        engine = make_engine(url)
        try:
            with engine.begin() as connection:
                config = alembic_config(url)
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
        finally:
            engine.dispose()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def wait_for_schema(url: str, timeout_s: float, poll_s: float = 0.5) -> None:
    """Block until another process has migrated ``url`` to head; raise after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    head = head_revision()
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if current_revision(url) == head:
                return
        except Exception as exc:  # not reachable yet
            last_error = exc
        time.sleep(poll_s)
    raise TimeoutError(
        f"database schema is not at revision {head} after {timeout_s:.0f}s "
        f"(last error: {last_error}); run `sentiloop db upgrade`"
    )
