"""guidelines: their versions, and the version each label was made under

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guideline",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["user.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version"),
    )
    with op.batch_alter_table("label") as batch_op:
        batch_op.add_column(sa.Column("guideline_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    if sqlite:  # the table is rebuilt: its partial unique index is made anew after
        op.drop_index("uq_label_pair_machine", table_name="label")
    with op.batch_alter_table("label") as batch_op:
        batch_op.drop_column("guideline_version")
    if sqlite:
        op.create_index(
            "uq_label_pair_machine",
            "label",
            ["pair_id", "source"],
            unique=True,
            sqlite_where=sa.text("user_id IS NULL"),
        )
    op.drop_table("guideline")
