from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

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


def test_feedback_duplicated_before_0006_keeps_its_rows_and_the_first_is_marked(
    database_url: str,
) -> None:
    """Identical key-less feedback that raced in before the unique index: the upgrade
    builds the index anyway, marking the first row only."""
    storage.upgrade(database_url, "0005")
    engine = database.make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO predictions (id, created_at, text_storage, text_sha256, label, "
                "scores, confidence, model_version, template_version, latency_ms) VALUES "
                "('p', :now, 'none', 'x', 'positive', '{}', 0.9, 'm', 'v1', 1.0)"
            ),
            {"now": datetime(2026, 11, 1, tzinfo=UTC)},
        )
        for index in range(3):
            connection.execute(
                text(
                    "INSERT INTO feedback (id, prediction_id, created_at, kind, agrees, "
                    "body_sha256) VALUES (:id, 'p', :at, 'verdict', true, 'same')"
                ),
                {"id": f"f{index}", "at": datetime(2026, 11, 2, index, tzinfo=UTC)},
            )
    storage.upgrade(database_url)
    with engine.connect() as connection:
        marks = connection.execute(
            text("SELECT id, unkeyed_body_sha256 FROM feedback ORDER BY id")
        ).all()
    engine.dispose()
    assert [tuple(mark) for mark in marks] == [("f0", "same"), ("f1", None), ("f2", None)]


def test_template_decisions_duplicated_before_0007_each_follow_the_one_before(
    database_url: str,
) -> None:
    """Two identical decisions that concurrent concludes recorded before the unique
    `follows_id`: the upgrade keeps both, chained, and builds the constraint."""
    storage.upgrade(database_url, "0006")
    engine = database.make_engine(database_url)
    with engine.begin() as connection:
        for index in range(3):
            connection.execute(
                text(
                    "INSERT INTO template_decisions (created_at, template_version, "
                    "previous_version, actor, reason, evidence) VALUES "
                    "(:at, 'v2', 'v1', 'ana', 'r', '{\"kind\": \"concluded\"}')"
                ),
                {"at": datetime(2026, 11, 2, index, tzinfo=UTC)},
            )
    storage.upgrade(database_url)
    with engine.connect() as connection:
        chain = connection.execute(
            text("SELECT id, follows_id FROM template_decisions ORDER BY id")
        ).all()
    engine.dispose()
    ids = [row[0] for row in chain]
    assert [row[1] for row in chain] == [0, ids[0], ids[1]]
