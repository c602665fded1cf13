"""rationale_job.created_by, training_run.created_by: the API key (its key_id) that made each

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10 06:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows made before this revision have no owner: only an admin key may cancel them.
    for table in ("rationale_job", "training_run"):
        op.add_column(table, sa.Column("created_by", sa.String(length=32), nullable=True))


def downgrade() -> None:
    for table in ("rationale_job", "training_run"):
        op.drop_column(table, "created_by")
