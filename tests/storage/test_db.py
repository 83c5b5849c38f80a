"""storage/db.py: SQLite's connection settings and file modes; writers take turns across
processes, not only across threads."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from storage import db
from storage.db import (
    SQLITE_BUSY_TIMEOUT_MS,
    current_revision,
    head_revision,
    make_engine,
    sqlite_url,
    transaction,
    upgrade,
)

WRITER = """
import sys, time
from storage.db import make_engine, sqlite_url, transaction
engine = make_engine(sqlite_url(sys.argv[1]))
print("ready", flush=True)
started = time.monotonic()
with transaction(engine):
    pass
print(round(time.monotonic() - started, 3), flush=True)
"""


def test_a_writer_in_another_process_waits_for_the_lock(tmp_path):
    engine = make_engine(sqlite_url(tmp_path))
    # An open write transaction that has not touched the database yet: SQLite's own lock is not
    # taken, so only the lock file can hold the other process back.
    with transaction(engine):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert child.poll() is None, "the other process wrote while this one held the lock"
    waited = float(child.communicate(timeout=60)[0].strip())
    assert child.returncode == 0 and waited >= 0.4
    assert (tmp_path / "prefloop.db-writer.lock").exists()
    engine.dispose()


def test_sqlite_connections_use_wal_a_busy_timeout_and_foreign_keys(tmp_path):
    engine = make_engine(sqlite_url(tmp_path))
    with engine.connect() as connection:
        pragmas = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys")
        }
    assert pragmas == {
        "journal_mode": "wal",
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
        "foreign_keys": 1,
    }
    engine.dispose()


def test_database_files_are_private_to_their_owner(tmp_path):
    """The database holds password and token hashes."""
    umask = os.umask(0o022)  # the usual one, under which SQLite alone creates files 0644
    try:
        engine = make_engine(sqlite_url(tmp_path))
        upgrade(engine)
        with transaction(engine) as session:
            session.execute(sa.text("CREATE TABLE t (x)"))  # keeps the -wal file non-empty
            names = {p.name for p in tmp_path.iterdir()}
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        engine.dispose()
    finally:
        os.umask(umask)
    assert {"prefloop.db", "prefloop.db-wal", "prefloop.db-shm"} <= names
    assert modes == dict.fromkeys(names, 0o600)


def test_current_revision_does_not_create_the_file(tmp_path):
    engine = make_engine(sqlite_url(tmp_path))
    assert current_revision(engine) is None
    assert list(tmp_path.iterdir()) == []
    upgrade(engine)
    assert current_revision(engine) == head_revision() is not None
    engine.dispose()


# PostgreSQL's connections: checked before use only after sitting idle, and read-only
# transactions in autocommit (no BEGIN and ROLLBACK round trips).


def _count_pings(engine, monkeypatch) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection):
        pings.append(1)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


@pytest.mark.postgres
def test_postgres_pings_a_pooled_connection_only_after_it_sat_idle(postgres_engine, monkeypatch):
    pings = _count_pings(postgres_engine, monkeypatch)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)
    for _ in range(5):
        with transaction(postgres_engine) as session:
            session.exec(sa.select(1))
    assert pings == []  # a busy connection goes out unchecked
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    for _ in range(5):
        with transaction(postgres_engine) as session:
            session.exec(sa.select(1))
    assert len(pings) == 5  # each had sat in the pool since its last use


def _backend_pid(engine) -> int:
    with transaction(engine, readonly=True) as session:
        return session.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()


def _terminate(engine, pid: int) -> None:
    """End the backend `pid` and wait until it has exited (the timeout argument, in ms): without
    the wait, the pooled connection's next statement could reach it first on a busy machine."""
    other = sa.create_engine(engine.url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with other.connect() as connection:
        assert connection.execute(sa.select(sa.func.pg_terminate_backend(pid, 30_000))).scalar()
    other.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("idle_s", "fails_once"), [(0.0, False), (3600.0, True)], ids=["sat-idle", "busy"]
)
def test_postgres_a_lost_connection_is_replaced(postgres_engine, monkeypatch, idle_s, fails_once):
    """A pooled connection lost meanwhile (its backend terminated): one that sat idle is checked
    and replaced before use, unseen; a busy one, not checked, fails its request once (the web
    app's 503), and the pool reconnects for the next."""
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", idle_s)
    lost = _backend_pid(postgres_engine)
    _terminate(postgres_engine, lost)
    if fails_once:
        with pytest.raises(db.UNAVAILABLE_ERRORS):
            _backend_pid(postgres_engine)
    assert _backend_pid(postgres_engine) != lost


@pytest.mark.postgres
def test_postgres_read_only_transactions_run_each_statement_on_its_own(postgres_engine):
    """No BEGIN: two statements of a read-only transaction are two transactions; a writing
    transaction's statements share one."""
    xid = sa.select(sa.func.txid_current())
    with transaction(postgres_engine, readonly=True) as session:
        first, second = session.execute(xid).scalar_one(), session.execute(xid).scalar_one()
    assert first != second
    with transaction(postgres_engine) as session:
        first, second = session.execute(xid).scalar_one(), session.execute(xid).scalar_one()
    assert first == second
