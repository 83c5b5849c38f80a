"""Alembic environment: prefloop passes its engine in `config.attributes["engine"]`.

On SQLite, foreign keys are off while the migrations run: a migration that changes a constraint
rebuilds the table (batch mode: copy, drop, rename), and with foreign keys on, dropping a table
that other rows reference deletes through them or fails. SQLite reads the pragma only outside a
transaction, so it is set on the driver's connection before the migrations' transaction begins;
`PRAGMA foreign_key_check` then checks every reference before the commit.
"""

from alembic import context
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
            connection.commit()
        finally:
            if sqlite:
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


run_migrations_online()
