"""indexes for the annotation queue: claim order over queued human pairs, live leases

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

QUEUED_FOR_HUMANS_SQL = "status = 'queued' AND route IN ('human', 'audit')"


def upgrade() -> None:
    op.create_index(
        "ix_pair_claim",
        "pair",
        [sa.text("n_labels DESC"), "id", "overlap"],
        sqlite_where=sa.text(QUEUED_FOR_HUMANS_SQL),
        postgresql_where=sa.text(QUEUED_FOR_HUMANS_SQL),
    )
    op.create_index(
        "ix_assignment_live",
        "assignment",
        ["pair_id", "expires_at"],
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )


def downgrade() -> None:
    op.drop_index("ix_assignment_live", table_name="assignment")
    op.drop_index("ix_pair_claim", table_name="pair")
