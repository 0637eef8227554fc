"""template_decisions.follows_id, unique: each decision names the one it was made on,
so two decisions taken at once from the same state (concurrent `experiments conclude`)
cannot both be recorded (the database decides, not a check before the insert)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("template_decisions") as batch:
        batch.add_column(sa.Column("follows_id", sa.Integer, nullable=True))
    # Rows recorded before follow the one before them; duplicates that the race let in
    # follow it too, so each keeps the id before it (ids are unique, so these are).
    op.execute(
        """
        UPDATE template_decisions SET follows_id = COALESCE(
            (SELECT MAX(earlier.id) FROM template_decisions AS earlier
             WHERE earlier.id < template_decisions.id), 0)
        """
    )
    with op.batch_alter_table("template_decisions") as batch:
        batch.alter_column("follows_id", existing_type=sa.Integer, nullable=False)
        batch.create_unique_constraint("uq_template_decisions_follows_id", ["follows_id"])


def downgrade() -> None:
    with op.batch_alter_table("template_decisions") as batch:
        batch.drop_constraint("uq_template_decisions_follows_id", type_="unique")
        batch.drop_column("follows_id")
