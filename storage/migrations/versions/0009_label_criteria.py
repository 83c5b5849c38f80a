"""label.criteria: judgments on labeling.criteria beside the overall choice

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("label") as batch_op:
        batch_op.add_column(sa.Column("criteria", sa.JSON(), nullable=True))


def downgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    if sqlite:  # the table is rebuilt: its partial unique index is made anew after
        op.drop_index("uq_label_pair_machine", table_name="label")
    with op.batch_alter_table("label") as batch_op:
        batch_op.drop_column("criteria")
    if sqlite:
        op.create_index(
            "uq_label_pair_machine",
            "label",
            ["pair_id", "source"],
            unique=True,
            sqlite_where=sa.text("user_id IS NULL"),
        )
