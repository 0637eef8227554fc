from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

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


def downgrade(url: str, revision: str) -> None:
    engine = database.make_engine(url)
    with engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
    engine.dispose()


INBOX_COLUMNS = "connector, event_id, event_type, received_at, status, text, external_id, attempts"


def test_feedback_rows_encoded_before_0010_get_columns_of_their_own_and_back(
    database_url: str,
) -> None:
    """0009 told a feedback row by an event type prefixed ``sentiloop:feedback:``, its
    label and CRM value as JSON in ``text`` (dropped once applied: the feedback it
    stored keeps them). 0010 moves them to ``kind``, ``label`` and ``signal``; the
    downgrade encodes them again, and a second upgrade reads them back the same."""
    storage.upgrade(database_url, "0009")
    engine = database.make_engine(database_url)
    at = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO predictions (id, created_at, text_storage, text_sha256, label, "
                "scores, confidence, model_version, template_version, latency_ms) VALUES "
                "('p', :at, 'none', 'x', 'negative', '{}', 0.9, 'm', 'v1', 1.0)"
            ),
            {"at": at},
        )
        connection.execute(
            text(
                "INSERT INTO feedback (id, prediction_id, created_at, kind, label, agrees, "
                "comment, source, idempotency_key, body_sha256) VALUES ('f', 'p', :at, "
                "'label', 'neutral', false, 'sentiloop.correction: Neutral', 'zendesk', "
                "'webhook:zendesk:inv-2', 'h')"
            ),
            {"at": at},
        )
        rows = [
            ("c-1", "zen:event-type:ticket.comment_added", "pending", "The parcel arrived broken."),
            (
                "inv-1",
                "sentiloop:feedback:satisfaction_rating",
                "unmatched",
                '{"label": "negative", "signal": "bad"}',
            ),
            ("inv-2", "sentiloop:feedback:sentiloop.correction", "done", None),
        ]
        for event_id, event_type, status, body in rows:
            connection.execute(
                text(
                    f"INSERT INTO webhook_inbox ({INBOX_COLUMNS}, scored_at) VALUES ('zendesk', "
                    ":event_id, :event_type, :at, :status, :body, 'T-1', 0, :done)"
                ),
                {
                    "event_id": event_id,
                    "event_type": event_type,
                    "at": at,
                    "status": status,
                    "body": body,
                    "done": at if status == "done" else None,
                },
            )

    def upgraded() -> list[tuple[object, ...]]:
        with engine.connect() as connection:
            found = connection.execute(
                text(
                    "SELECT event_id, event_type, kind, label, signal, text, done_at IS NOT NULL "
                    "FROM webhook_inbox ORDER BY id"
                )
            ).all()
        return [tuple(row) for row in found]

    decoded = [
        (
            "c-1",
            "zen:event-type:ticket.comment_added",
            "text",
            None,
            None,
            "The parcel arrived broken.",
            False,
        ),
        ("inv-1", "satisfaction_rating", "feedback", "negative", "bad", None, False),
        ("inv-2", "sentiloop.correction", "feedback", "neutral", "Neutral", None, True),
    ]
    storage.upgrade(database_url)
    assert upgraded() == decoded
    downgrade(database_url, "0009")
    columns = {column["name"] for column in inspect(engine).get_columns("webhook_inbox")}
    assert {"scored_at"} <= columns and not {"kind", "label", "signal", "done_at"} & columns
    with engine.connect() as connection:
        encoded = connection.execute(
            text("SELECT event_id, event_type, text, scored_at IS NOT NULL FROM webhook_inbox")
        ).all()
    assert sorted(tuple(row) for row in encoded) == [
        ("c-1", "zen:event-type:ticket.comment_added", "The parcel arrived broken.", False),
        ("inv-1", "sentiloop:feedback:satisfaction_rating", rows[1][3], False),
        (
            "inv-2",
            "sentiloop:feedback:sentiloop.correction",
            '{"label": "neutral", "signal": "Neutral"}',
            True,
        ),
    ]
    storage.upgrade(database_url)
    assert upgraded() == decoded
    engine.dispose()
