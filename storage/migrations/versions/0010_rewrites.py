"""rewrites: pair.strategy 'edit', response.edited_from_id

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

STRATEGIES = ("max_min", "max_random", "random", "uncertain", "explore", "seed", "eval", "gold")
CLAIM_INDEXES = {
    "ix_pair_claim": "status = 'queued' AND route IN ('human', 'audit')",
    "ix_pair_eval_claim": "status = 'queued' AND route = 'eval'",
    "ix_pair_gold_claim": "status = 'queued' AND route = 'gold'",
}


def _set_strategies(strategies: tuple[str, ...]) -> None:
    """The CHECK constraint of pair.strategy (as 0005 and 0006 do: SQLite rebuilds the table and
    its claim indexes are made anew after)."""
    if op.get_context().dialect.name == "sqlite":
        for name in CLAIM_INDEXES:
            op.drop_index(name, table_name="pair")
        with op.batch_alter_table("pair", recreate="always") as batch_op:
            batch_op.alter_column(
                "strategy",
                type_=sa.Enum(
                    *strategies,
                    name="ck_pairstrategy",
                    native_enum=False,
                    create_constraint=True,
                    length=16,
                ),
                existing_type=sa.String(16),
                existing_nullable=False,
            )
        for name, where in CLAIM_INDEXES.items():
            op.create_index(
                name,
                "pair",
                [sa.text("n_labels DESC"), "id", "overlap"],
                sqlite_where=sa.text(where),
            )
        return
    op.drop_constraint("ck_pairstrategy", "pair", type_="check")
    allowed = ", ".join(f"'{value}'" for value in strategies)
    op.create_check_constraint("ck_pairstrategy", "pair", f"strategy IN ({allowed})")


def upgrade() -> None:
    _set_strategies((*STRATEGIES, "edit"))
    with op.batch_alter_table("response") as batch_op:
        batch_op.add_column(sa.Column("edited_from_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_response_edited_from_id_response", "response", ["edited_from_id"], ["id"]
        )


def downgrade() -> None:
    # The edits cannot exist in the older schema: their pairs go, with their labels and leases,
    # and the edited responses.
    edits = "SELECT id FROM pair WHERE strategy = 'edit'"
    for table in ("label", "assignment", "suggestion"):
        op.execute(f"DELETE FROM {table} WHERE pair_id IN ({edits})")
    op.execute("DELETE FROM pair WHERE strategy = 'edit'")
    op.execute(
        "DELETE FROM response WHERE edited_from_id IS NOT NULL "
        "AND id NOT IN (SELECT response_a_id FROM pair UNION SELECT response_b_id FROM pair)"
    )
    with op.batch_alter_table("response") as batch_op:
        batch_op.drop_constraint("fk_response_edited_from_id_response", type_="foreignkey")
        batch_op.drop_column("edited_from_id")
    _set_strategies(STRATEGIES)
