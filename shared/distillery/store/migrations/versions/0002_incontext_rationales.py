"""rationale.incontext_rationales: whether each demonstration shown carried a rationale

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows stored before this revision keep an empty list: which of their demonstrations had a
    # rationale (and whether a chat teacher saw them at all) was not recorded.
    op.add_column(
        "rationale",
        sa.Column(
            "incontext_rationales",
            postgresql.JSONB(),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("rationale", "incontext_rationales")
