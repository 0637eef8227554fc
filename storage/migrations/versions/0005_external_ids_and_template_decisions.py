"""predictions.external_id/external_source (the CRM's own ids, for late labels) and
template_decisions (the default prompt template version, an append-only history)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("external_id", sa.String(200), nullable=True))
    op.add_column("predictions", sa.Column("external_source", sa.String(100), nullable=True))
    op.create_index(
        "ix_predictions_external",
        "predictions",
        ["external_id", "external_source", "created_at"],
    )
    op.create_table(
        "template_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("template_version", sa.String(64), nullable=False),
        sa.Column("previous_version", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("template_decisions")
    op.drop_index("ix_predictions_external", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("external_source")
        batch.drop_column("external_id")
