"""feedback.unkeyed_body_sha256, unique per prediction: identical feedback sent at the
same time without an idempotency key is stored once (the database decides, not a
check before the insert that concurrent requests all passed)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("feedback", sa.Column("unkeyed_body_sha256", sa.String(64), nullable=True))
    # Rows stored before: the first of each set of identical key-less rows keeps the
    # mark (the duplicates the race let in stay, unmarked, so the index can be built).
    op.execute(
        """
        UPDATE feedback SET unkeyed_body_sha256 = body_sha256
        WHERE idempotency_key IS NULL AND NOT EXISTS (
            SELECT 1 FROM feedback AS earlier
            WHERE earlier.prediction_id = feedback.prediction_id
              AND earlier.body_sha256 = feedback.body_sha256
              AND earlier.idempotency_key IS NULL
              AND (earlier.created_at < feedback.created_at
                   OR (earlier.created_at = feedback.created_at AND earlier.id < feedback.id))
        )
        """
    )
    op.create_index(
        "uq_feedback_unkeyed_body",
        "feedback",
        ["prediction_id", "unkeyed_body_sha256"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_feedback_unkeyed_body", table_name="feedback")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("unkeyed_body_sha256")
