"""Engines and sessions. Nothing is created at import time: call ``make_engine``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 10_000

# SQLite errors after which a pooled connection must not be used again: a
# connection opened while the file was read-only stays read-only for ever, and
# one that hit a full disk or an I/O error may hold a broken state.
_SQLITE_STUCK = ("readonly database", "disk i/o error", "database or disk is full",
                 "unable to open database")  # fmt: skip


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed feedback survives power loss, not only a crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # Overwrite removed content with zeros (purged texts must not stay in free space).
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def _invalidate_stuck_sqlite_connections(context: ExceptionContext) -> None:
    """Treat the errors in ``_SQLITE_STUCK`` like a lost connection: SQLAlchemy then
    discards the pooled connections, and the next use opens fresh ones."""
    message = str(context.original_exception).lower()
    if any(fragment in message for fragment in _SQLITE_STUCK):
        context.is_disconnect = True


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and their folder.

    Statement parameters (user texts) never appear in logs or error messages.
    """
    kwargs.setdefault("hide_parameters", True)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **kwargs,
        )
        event.listen(engine, "connect", _set_sqlite_pragmas)
        event.listen(engine, "handle_error", _invalidate_stuck_sqlite_connections)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def ping(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def discard_freed_pages(engine: Engine) -> str:
    """After a purge: make the database drop the removed values from disk.

    SQLite keeps old page images in its write-ahead log until a checkpoint: a
    ``TRUNCATE`` checkpoint writes the purged pages (zeroed by ``secure_delete``)
    into the file and empties the log. PostgreSQL keeps old row versions until
    ``VACUUM``. Returns what was done, for the operator.
    """
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            busy, log_frames, moved = connection.execute(
                text("PRAGMA wal_checkpoint(TRUNCATE)")
            ).one()
        if busy:
            return (
                f"write-ahead log checkpoint incomplete ({moved} of {log_frames} pages; "
                "a reader held it): run the purge again when the service is idle"
            )
        return "write-ahead log checkpointed and truncated"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM predictions, feedback"))
    return "old row versions vacuumed"


def describe_error(error: BaseException) -> str:
    """A one-line reason for a database error, without the statement or its values."""
    if isinstance(error, StatementError) and error.orig is not None:
        error = error.orig
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first_line}"[:300]
