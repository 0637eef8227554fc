"""writeback_outbox: labels to write back to the CRM's ticket, added with the inbox
row's "done" in one transaction, one row per (connector, event id)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "writeback_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("connector", sa.String(32), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("external_id", sa.String(200), nullable=False),
        sa.Column("comment_id", sa.String(200), nullable=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("prediction_id", sa.String(36), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("template_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("connector", "event_id", name="uq_writeback_outbox_event"),
    )
    op.create_index("ix_writeback_outbox_status_id", "writeback_outbox", ["status", "id"])
    op.create_index(
        "ix_writeback_outbox_ticket", "writeback_outbox", ["connector", "external_id", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_writeback_outbox_ticket", table_name="writeback_outbox")
    op.drop_index("ix_writeback_outbox_status_id", table_name="writeback_outbox")
    op.drop_table("writeback_outbox")
