"""Engine and transactions. The only place prefloop opens a database session.

SQLite (the default) runs in WAL mode with a busy timeout. Its Python driver starts transactions
lazily, so two sessions that read and then write can deadlock on the lock upgrade; here every
transaction that may write starts with ``BEGIN IMMEDIATE`` and takes the write lock up front,
while ``readonly=True`` transactions stay deferred and run beside the writer. The writers also
queue on a lock that wakes them in turn, threads on an RLock and processes (server workers, the
scheduler's children, the CLI) on an flock of a file beside the database: SQLite's busy handler
polls with backoff, so under a few dozen threads some writers starved past the busy timeout, and
two server workers handed the lock back and forth with sleeps of milliseconds.

The database file holds password and API token hashes: it is created readable by its owner only
(SQLite gives the -wal and -shm files the database file's mode).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.text import to_json

SQLITE_BUSY_TIMEOUT_MS = 30_000
# PostgreSQL: a pooled connection idle this long is checked with a round trip before use. A busy
# server's connections are never idle that long, and they need no check: the first error that
# shows the database gone invalidates every connection of the pool (SQLAlchemy's rule), so a
# restart costs the requests while it is down and none after. Checking every checkout
# (pool_pre_ping) cost a round trip a transaction, one in four of the labeling API's.
PING_AFTER_IDLE_S = 1.0

# The errors that mean the database is unreachable, not that a statement was wrong: the driver
# could not reach the server (OperationalError, InterfaceError), or the pool had no free
# connection within `database.pool_timeout` (TimeoutError).
UNAVAILABLE_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


class _WriterLock:
    """The write lock of one SQLite database: an RLock for this process's threads, then (at the
    outermost level) an exclusive flock of `path` for the processes; `path` None: threads only."""

    def __init__(self, path: str | None):
        self._threads = threading.RLock()
        self._depth = 0
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._threads.acquire()
        if self._depth == 0 and self._path is not None:
            try:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # blocks without the GIL
            except BaseException:
                self._threads.release()
                raise
        self._depth += 1

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()


# One write lock per SQLite engine (see the module docstring).
_sqlite_writers: weakref.WeakKeyDictionary[Engine, _WriterLock] = weakref.WeakKeyDictionary()


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'prefloop.db'}"


def normalize_url(url: str) -> str:
    """Accept plain postgresql:// URLs and route them to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, echo: bool = False, pool=None) -> Engine:
    """An engine for `url`; `pool`: the settings' `database` section (PostgreSQL's pool and
    connect timeout; defaults without it). A server that lost its database gets errors at once
    (connect refused, or the connect timeout) and reconnects when it is back: a connection idle
    for PING_AFTER_IDLE_S is checked before use, and a lost one invalidates the pool."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            # A server's worker threads each may hold a connection (readers run beside the
            # writer); the default pool of 5 + 10 timed out under 32 threads.
            pool_size=10,
            max_overflow=54,
            json_serializer=to_json,
        )
        path = _sqlite_file(engine)
        _configure_sqlite(engine, path)
        _sqlite_writers[engine] = _WriterLock(f"{path}-writer.lock" if path else None)
        return engine
    if pool is None:
        from storage.settings import DatabaseSettings

        pool = DatabaseSettings()
    connect_args = {"connect_timeout": pool.connect_timeout} if "psycopg" in url else {}
    engine = sa.create_engine(
        url,
        echo=echo,
        pool_size=pool.pool_size,
        max_overflow=pool.max_overflow,
        pool_timeout=pool.pool_timeout,
        connect_args=connect_args,
        json_serializer=to_json,
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a connection that sat in the pool for PING_AFTER_IDLE_S before handing it out; a
    failed check makes the pool drop it and hand out another (a new connection: an error there,
    with the database down, is the caller's 503)."""

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"a pooled connection was lost: {exc}") from exc


def _sqlite_file(engine: Engine) -> str | None:
    """The file of an on-disk SQLite database; None for memory and URI databases."""
    database = engine.url.database
    on_disk = database not in (None, "", ":memory:") and not database.startswith("file:")
    return database if on_disk else None


def _create_private(path: str) -> None:
    """Create the (empty) database file with mode 0600 before SQLite does with 0644."""
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _configure_sqlite(engine: Engine, path: str | None) -> None:
    if path is not None:

        @sa.event.listens_for(engine, "do_connect")
        def _before_connect(_dialect, _record, _cargs, _cparams) -> None:
            _create_private(path)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of the driver's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        readonly = connection.get_execution_options().get("prefloop_readonly", False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def transaction(engine: Engine, *, readonly: bool = False) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any exception.

    Objects stay usable after the commit (expire_on_commit=False), so a caller may read the
    rows it got back once the transaction is over.
    """
    bind = _readonly(engine) if readonly else engine
    writer_lock = None if readonly else _sqlite_writers.get(engine)
    with writer_lock or nullcontext(), Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            if not readonly:
                session.commit()
            # a read-only transaction ends when the session closes, leaving its rows loaded
        except BaseException:
            session.rollback()
            raise


def _readonly(engine: Engine) -> Engine:
    """The engine for read-only transactions. SQLite: a deferred BEGIN (see _configure_sqlite).
    PostgreSQL: autocommit, each statement in a transaction of its own, as it is in READ
    COMMITTED anyway, with no BEGIN and ROLLBACK round trips: an API token's check is one
    statement, where it was three."""
    if is_sqlite(engine):
        return engine.execution_options(prefloop_readonly=True)
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def run_core(session: Session, statement, params: dict | None = None) -> sa.CursorResult:
    """A Core statement on the session's connection, in its transaction. The ORM's execute path
    (session.execute) costs about as much again as a small statement itself: the queue's clicks
    and the per-request reads use this."""
    return session.connection().execute(statement, params)


def refresh_statistics(session: Session, *tables: str) -> None:
    """PostgreSQL: ANALYZE `tables` in the session's transaction, after a bulk insert into them
    (a round's pairs). The planner's row counts otherwise stay those of the table before it
    until autovacuum's next pass, up to a minute later: with a new table's "no queued pairs",
    the labeling page's queue count walked every queued pair, 23 ms a click at 12k pairs
    instead of 0.5 ms. Run in the transaction, the statistics count its rows and commit with
    them. SQLite: nothing (its queue statements name their indexes)."""
    if not is_sqlite(session.get_bind()):
        session.connection().exec_driver_sql(f"ANALYZE {', '.join(tables)}")


def migrations_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema in place (alembic)."""
    from alembic import command

    command.upgrade(migrations_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema's alembic revision; None when there is no schema (or no SQLite file: this
    does not create one)."""
    from alembic.runtime.migration import MigrationContext

    path = _sqlite_file(engine) if is_sqlite(engine) else None
    if path is not None and not os.path.exists(path):
        return None
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    """The schema revision this release's migrations end at."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).parent / "migrations")).get_current_head()
