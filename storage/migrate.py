"""Runs the Alembic migrations shipped in ``storage/migrations``.

Alembic (with Mako and Pygments, ~11 MB) is imported by the functions that run it:
the model processes import ``storage`` for the model roles and never migrate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from core.database import make_engine
from core.file_lock import exclusive_file_lock

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

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
    from alembic import command

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
