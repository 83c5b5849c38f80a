"""gold pairs: route and strategy 'gold', their claim index, the gold table, user.gold_since

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STRATEGIES = ("max_min", "max_random", "random", "uncertain", "explore", "seed", "eval")
ROUTES = ("human", "proxy", "audit", "eval")
CHOICES = ("a", "b", "tie", "both_bad")
STATUSES = ("queued", "done", "discarded")
CLAIM_INDEXES = {
    "ix_pair_claim": "status = 'queued' AND route IN ('human', 'audit')",
    "ix_pair_eval_claim": "status = 'queued' AND route = 'eval'",
}
QUEUED_GOLD_SQL = "status = 'queued' AND route = 'gold'"


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
    """The CHECK constraints of pair.strategy and pair.route, to allow exactly these values (as
    0005 does: SQLite rebuilds the table, and its claim indexes are made anew after)."""
    if op.get_context().dialect.name == "sqlite":
        for name in CLAIM_INDEXES:
            op.drop_index(name, table_name="pair")
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
        for name, where in CLAIM_INDEXES.items():
            _claim_index(name, where)
        return
    for name, column, values in (
        ("ck_pairstrategy", "strategy", strategies),
        ("ck_route", "route", routes),
    ):
        op.drop_constraint(name, "pair", type_="check")
        allowed = ", ".join(f"'{value}'" for value in values)
        op.create_check_constraint(name, "pair", f"{column} IN ({allowed})")


def upgrade() -> None:
    _set_values((*STRATEGIES, "gold"), (*ROUTES, "gold"))
    _claim_index("ix_pair_gold_claim", QUEUED_GOLD_SQL)
    op.create_table(
        "gold",
        sa.Column("pair_id", sa.Integer(), nullable=False),
        sa.Column("answer", _enum(CHOICES, "ck_choice"), nullable=False),
        sa.Column("source", _enum(("imported", "marked"), "ck_goldsource"), nullable=False),
        sa.Column("former_route", _enum((*ROUTES, "gold"), "ck_route"), nullable=True),
        sa.Column("former_status", _enum(STATUSES, "ck_pairstatus"), nullable=True),
        sa.Column("former_overlap", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["user.id"]),
        sa.ForeignKeyConstraint(["pair_id"], ["pair.id"]),
        sa.PrimaryKeyConstraint("pair_id"),
    )
    with op.batch_alter_table("user") as batch_op:
        batch_op.add_column(
            sa.Column("gold_since", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("user") as batch_op:
        batch_op.drop_column("gold_since")
    # A marked pair goes back to what it was; imported gold pairs cannot exist in the older
    # schema: they go, with their labels, leases and responses.
    op.execute(
        "UPDATE pair SET route = (SELECT former_route FROM gold WHERE gold.pair_id = pair.id), "
        "status = (SELECT former_status FROM gold WHERE gold.pair_id = pair.id), "
        "overlap = (SELECT former_overlap FROM gold WHERE gold.pair_id = pair.id) WHERE id IN (SELECT pair_id FROM gold WHERE former_route IS NOT NULL)"
    )
    op.drop_table("gold")
    pair_ids = "SELECT id FROM pair WHERE route = 'gold'"
    op.execute(
        "CREATE TEMPORARY TABLE gold_responses AS SELECT response_a_id AS id FROM pair "
        "WHERE route = 'gold' UNION SELECT response_b_id FROM pair WHERE route = 'gold'"
    )
    for table in ("label", "assignment", "suggestion"):
        op.execute(f"DELETE FROM {table} WHERE pair_id IN ({pair_ids})")
    op.execute("DELETE FROM pair WHERE route = 'gold'")
    op.execute(
        "DELETE FROM response WHERE id IN (SELECT id FROM gold_responses) "
        "AND id NOT IN (SELECT response_a_id FROM pair UNION SELECT response_b_id FROM pair)"
    )
    op.execute("DROP TABLE gold_responses")
    op.drop_index("ix_pair_gold_claim", table_name="pair")
    _set_values(STRATEGIES, ROUTES)
