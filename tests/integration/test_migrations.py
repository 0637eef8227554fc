from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import storage
from core import database
from storage.migrate import alembic_config, current_revision
from storage.models import Base


def test_upgrade_reaches_head_and_matches_the_models(database_url: str) -> None:
    storage.upgrade(database_url)
    storage.upgrade(database_url)  # idempotent
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert current_revision(database_url) == head
    engine = database.make_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_sqlite_file_uses_wal(sqlite_url: str) -> None:
    storage.upgrade(sqlite_url)
    engine = database.make_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_concurrent_upgrades_of_one_database_all_succeed(database_url: str) -> None:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4) as pool:
        list(pool.map(storage.upgrade, [database_url] * 4))
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    assert current_revision(database_url) == head
