"""webhook_inbox: events received from CRM webhooks, kept until scored, one row per
(connector, event id) so that a retried or replayed delivery is stored once

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_inbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("connector", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=True),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("comment_id", sa.String(200), nullable=True),
        sa.Column("author", sa.String(200), nullable=True),
        sa.Column("language", sa.String(8), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("prediction_id", sa.String(36), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("connector", "event_id", name="uq_webhook_inbox_event"),
    )
    op.create_index("ix_webhook_inbox_status_id", "webhook_inbox", ["status", "id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_inbox_status_id", table_name="webhook_inbox")
    op.drop_table("webhook_inbox")
