"""webhook_inbox.kind, label, signal: CRM feedback rows told by a column of their own
(``kind``: text or feedback) with their label and the CRM's value in columns of their
own, where they were encoded (an ``event_type`` prefixed with ``sentiloop:feedback:``,
the label and value as JSON in ``text``); ``scored_at`` renamed ``done_at``, as a
feedback row is applied, not scored

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# How revision 0009's code marked a feedback row (storage/inbox.py then).
PREFIX = "sentiloop:feedback:"

inbox = sa.table(
    "webhook_inbox",
    sa.column("id", sa.Integer),
    sa.column("connector", sa.String),
    sa.column("event_id", sa.String),
    sa.column("event_type", sa.String),
    sa.column("text", sa.Text),
    sa.column("kind", sa.String),
    sa.column("label", sa.String),
    sa.column("signal", sa.String),
)
feedback = sa.table(
    "feedback",
    sa.column("idempotency_key", sa.String),
    sa.column("label", sa.String),
    sa.column("comment", sa.Text),
)


def _feedback_key(connector: str, event_id: str) -> str:
    """The idempotency key the inbox worker gave the feedback of an event (0009)."""
    key = f"webhook:{connector}:{event_id}"
    if len(key) <= 200:
        return key
    return f"webhook:{connector}:sha256:{hashlib.sha256(event_id.encode()).hexdigest()}"


def _decoded(connection: sa.Connection, row: sa.Row) -> dict[str, str | None]:
    """A 0009 feedback row's columns: its label and value from the JSON in ``text``,
    or, for a row applied (its text dropped), from the feedback it stored."""
    event_type = row.event_type.removeprefix(PREFIX)
    label = signal = None
    if row.text:
        content = json.loads(row.text)
        label, signal = content.get("label") or None, content.get("signal") or None
    else:
        stored = connection.execute(
            sa.select(feedback.c.label, feedback.c.comment).where(
                feedback.c.idempotency_key == _feedback_key(row.connector, row.event_id)
            )
        ).first()
        if stored is not None:
            label = stored.label
            if stored.comment and stored.comment.startswith(f"{event_type}: "):
                signal = stored.comment.removeprefix(f"{event_type}: ")[:200] or None
    return {
        "kind": "feedback",
        "event_type": event_type,
        "label": label,
        "signal": signal,
        "text": None,
    }


def upgrade() -> None:
    with op.batch_alter_table("webhook_inbox") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=True))
        batch.add_column(sa.Column("label", sa.String(16), nullable=True))
        batch.add_column(sa.Column("signal", sa.String(200), nullable=True))
        batch.alter_column(
            "scored_at", new_column_name="done_at", existing_type=sa.DateTime(timezone=True)
        )
    connection = op.get_bind()
    encoded = connection.execute(
        sa.select(inbox.c.id, inbox.c.connector, inbox.c.event_id, inbox.c.event_type, inbox.c.text)
        .where(inbox.c.event_type.startswith(PREFIX, autoescape=True))
        .order_by(inbox.c.id)
    ).all()
    for row in encoded:
        connection.execute(
            sa.update(inbox).where(inbox.c.id == row.id).values(**_decoded(connection, row))
        )
    connection.execute(sa.update(inbox).where(inbox.c.kind.is_(None)).values(kind="text"))
    with op.batch_alter_table("webhook_inbox") as batch:
        batch.alter_column("kind", existing_type=sa.String(16), nullable=False)


def downgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(inbox.c.id, inbox.c.event_type, inbox.c.label, inbox.c.signal)
        .where(inbox.c.kind == "feedback")
        .order_by(inbox.c.id)
    ).all()
    for row in rows:  # encoded as 0009 did, the label kept in every row
        content = {"label": row.label or "", "signal": row.signal or ""}
        connection.execute(
            sa.update(inbox)
            .where(inbox.c.id == row.id)
            .values(event_type=(PREFIX + row.event_type)[:200], text=json.dumps(content))
        )
    with op.batch_alter_table("webhook_inbox") as batch:
        batch.drop_column("signal")
        batch.drop_column("label")
        batch.drop_column("kind")
        batch.alter_column(
            "done_at", new_column_name="scored_at", existing_type=sa.DateTime(timezone=True)
        )
