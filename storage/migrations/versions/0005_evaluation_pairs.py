"""evaluation pairs: route and strategy 'eval', and their claim index

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STRATEGIES = ("max_min", "max_random", "random", "uncertain", "explore", "seed")
ROUTES = ("human", "proxy", "audit")
QUEUED_FOR_EVAL_SQL = "status = 'queued' AND route = 'eval'"
QUEUED_FOR_HUMANS_SQL = "status = 'queued' AND route IN ('human', 'audit')"


def _claim_index(name: str, where: str) -> None:
    op.create_index(
        name,
        "pair",
        [sa.text("n_labels DESC"), "id", "overlap"],
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _set_values(strategies: tuple[str, ...], routes: tuple[str, ...]) -> None:
    """The CHECK constraints of pair.strategy and pair.route, to allow exactly these values."""
    if op.get_context().dialect.name == "sqlite":
        # SQLite cannot alter a constraint: the table is rebuilt (storage/migrations/env.py turns
        # foreign keys off meanwhile, so the rows that reference pairs stay). Its copy of an
        # index would lose a DESC column: the claim index is made anew after.
        op.drop_index("ix_pair_claim", table_name="pair")
        with op.batch_alter_table("pair", recreate="always") as batch_op:
            batch_op.alter_column(
                "strategy",
                type_=_enum(strategies, "ck_pairstrategy"),
                existing_type=sa.String(16),
                existing_nullable=False,
            )
            batch_op.alter_column(
                "route",
                type_=_enum(routes, "ck_route"),
                existing_type=sa.String(16),
                existing_nullable=False,
            )
        _claim_index("ix_pair_claim", QUEUED_FOR_HUMANS_SQL)
        return
    for name, column, values in (
        ("ck_pairstrategy", "strategy", strategies),
        ("ck_route", "route", routes),
    ):
        op.drop_constraint(name, "pair", type_="check")
        allowed = ", ".join(f"'{value}'" for value in values)
        op.create_check_constraint(name, "pair", f"{column} IN ({allowed})")


def upgrade() -> None:
    _set_values((*STRATEGIES, "eval"), (*ROUTES, "eval"))
    _claim_index("ix_pair_eval_claim", QUEUED_FOR_EVAL_SQL)


def downgrade() -> None:
    # The evaluation pairs cannot exist in the older schema: they go, with their votes, leases
    # and the replies sampled for them.
    pair_ids = "SELECT id FROM pair WHERE route = 'eval'"
    op.execute(
        "CREATE TEMPORARY TABLE eval_responses AS SELECT response_a_id AS id FROM pair "
        "WHERE route = 'eval' UNION SELECT response_b_id FROM pair WHERE route = 'eval'"
    )
    for table in ("label", "assignment", "suggestion"):
        op.execute(f"DELETE FROM {table} WHERE pair_id IN ({pair_ids})")
    op.execute("DELETE FROM pair WHERE route = 'eval'")
    op.execute(
        "DELETE FROM response WHERE id IN (SELECT id FROM eval_responses) "
        "AND id NOT IN (SELECT response_a_id FROM pair UNION SELECT response_b_id FROM pair)"
    )
    op.execute("DROP TABLE eval_responses")
    op.drop_index("ix_pair_eval_claim", table_name="pair")
    _set_values(STRATEGIES, ROUTES)
