"""at most one deployed policy

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "uq_policy_deployed",
        "policy",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'deployed'"),
        postgresql_where=sa.text("status = 'deployed'"),
    )


def downgrade() -> None:
    op.drop_index("uq_policy_deployed", table_name="policy")
