"""review labels: label.source 'review', an admin's decision on a pair whose labels disagree

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SOURCES = ("human", "proxy", "seed")
MACHINE_INDEX = "uq_label_pair_machine"


def _set_sources(sources: tuple[str, ...]) -> None:
    """The CHECK constraint of label.source, to allow exactly these values."""
    if op.get_context().dialect.name == "sqlite":
        # SQLite rebuilds the table (foreign keys off meanwhile, storage/migrations/env.py); the
        # partial unique index is made anew after, its WHERE clause spelled out.
        op.drop_index(MACHINE_INDEX, table_name="label")
        with op.batch_alter_table("label", recreate="always") as batch_op:
            batch_op.alter_column(
                "source",
                type_=sa.Enum(
                    *sources,
                    name="ck_labelsource",
                    native_enum=False,
                    create_constraint=True,
                    length=16,
                ),
                existing_type=sa.String(16),
                existing_nullable=False,
            )
        op.create_index(
            MACHINE_INDEX,
            "label",
            ["pair_id", "source"],
            unique=True,
            sqlite_where=sa.text("user_id IS NULL"),
        )
        return
    op.drop_constraint("ck_labelsource", "label", type_="check")
    allowed = ", ".join(f"'{value}'" for value in sources)
    op.create_check_constraint("ck_labelsource", "label", f"source IN ({allowed})")


def upgrade() -> None:
    _set_sources((*SOURCES, "review"))


def downgrade() -> None:
    # The decisions cannot exist in the older schema: they go (the audit keeps who decided what).
    op.execute("DELETE FROM label WHERE source = 'review'")
    _set_sources(SOURCES)
