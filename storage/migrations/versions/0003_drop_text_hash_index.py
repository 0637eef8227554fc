"""drop the index on predictions.text_sha256

No query reads predictions by text hash (the export carries the column), and
the hashes are random: each insert touched a random leaf of that index, which
made the prediction log's writes several times dearer as the table grew.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_predictions_text_sha256", table_name="predictions")


def downgrade() -> None:
    op.create_index("ix_predictions_text_sha256", "predictions", ["text_sha256"])
