"""One scheduler per database: a lock that a process holds for as long as its scheduler runs.

Several `prefloop serve` replicas may share one PostgreSQL database; exactly one of them may run
the scheduler, or two would start the same training job. The lock dies with its holder, whatever
kills it (kill -9, a lost host), so a restarted replica never waits for a lease to run out:
- PostgreSQL: a session-level advisory lock on a connection of its own, held open. The server
  frees it when that connection ends. The connection's `application_name` names the holder
  (host and pid), which is how a refused process can say who holds it.
- SQLite: an flock of a file beside the database (the database is local to its data directory,
  so are all its processes), with the holder written into the file.

If the database restarts under a PostgreSQL holder, its connection and so its lock are gone;
`check()` takes the lock again on a new connection and answers False when another process took
it meanwhile, and the scheduler then stops dispatching.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.db import UNAVAILABLE_ERRORS, _sqlite_file, is_sqlite

log = logging.getLogger("prefloop.scheduler")

# pg_try_advisory_lock(int4, int4): the two keys of prefloop's scheduler lock ('pflp', 1).
LOCK_KEYS = (0x70666C70, 1)
_HOLDER_QUERY = sa.text(
    "SELECT a.application_name, a.backend_start FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :k1 AND l.objid = :k2 "
    "AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database "
    "WHERE datname = current_database())"
)


class SchedulerRunning(RuntimeError):
    """Another process runs the scheduler on this database; the message names it."""


def holder_name() -> str:
    return f"prefloop scheduler on {socket.gethostname()} pid {os.getpid()}"


class SchedulerLock:
    """Held from `acquire_scheduler_lock` until `release()` (or the process's end)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._connection: sa.Connection | None = None
        self._fd: int | None = None

    def _try_postgres(self) -> bool:
        connection = self.engine.connect()
        try:
            # application_name is how another process learns who holds the lock (pg_stat_activity)
            connection.execute(
                sa.text("SELECT set_config('application_name', :name, false)"),
                {"name": holder_name()[:63]},
            )
            got = connection.execute(
                sa.text("SELECT pg_try_advisory_lock(:k1, :k2)"),
                {"k1": LOCK_KEYS[0], "k2": LOCK_KEYS[1]},
            ).scalar_one()
            connection.commit()
        except BaseException:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def _holder_postgres(self) -> str:
        with self.engine.connect() as connection:
            row = connection.execute(
                _HOLDER_QUERY, {"k1": LOCK_KEYS[0], "k2": LOCK_KEYS[1]}
            ).first()
        if row is None:
            return "another process (it has just let go: try again)"
        return f"{row.application_name or 'an unnamed connection'}, since {row.backend_start:%Y-%m-%d %H:%M:%S %Z}"

    def _lock_path(self) -> str:
        path = _sqlite_file(self.engine)
        if path is None:
            raise ValueError("the scheduler lock needs an on-disk SQLite database")
        return f"{path}-scheduler.lock"

    def _try_sqlite(self) -> bool:
        fd = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder_name()}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S UTC}".encode())
        self._fd = fd
        return True

    def _holder_sqlite(self) -> str:
        try:
            with open(self._lock_path()) as f:
                return f.read().strip() or "another process"
        except OSError:
            return "another process"

    def acquire(self) -> None:
        """Take the lock, or raise SchedulerRunning naming the process that holds it."""
        sqlite = is_sqlite(self.engine)
        if (self._try_sqlite if sqlite else self._try_postgres)():
            return
        holder = self._holder_sqlite() if sqlite else self._holder_postgres()
        raise SchedulerRunning(f"a scheduler already runs on this database: {holder}")

    def check(self) -> bool:
        """Whether this process still holds the lock; after a lost PostgreSQL connection, take
        it again if it is free. False when another process holds it now."""
        if is_sqlite(self.engine):
            return self._fd is not None
        try:
            if self._connection is not None:
                self._connection.exec_driver_sql("SELECT 1")
                self._connection.commit()
                return True
        except UNAVAILABLE_ERRORS:
            log.warning("the scheduler lock's connection was lost; taking the lock again")
            self._drop_connection()
        try:
            if self._try_postgres():
                return True
        except UNAVAILABLE_ERRORS:
            return False  # the database is still down: nothing can be dispatched anyway
        log.error("another process took the scheduler lock: this scheduler stops dispatching")
        return False

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception:  # a connection to a lost server may fail even to close
                pass
            self._connection = None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._connection is not None:
            try:
                self._connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:k1, :k2)"),
                    {"k1": LOCK_KEYS[0], "k2": LOCK_KEYS[1]},
                )
                self._connection.commit()
            except UNAVAILABLE_ERRORS:
                pass  # the server is gone, and the lock with it
            self._drop_connection()


def acquire_scheduler_lock(engine: Engine) -> SchedulerLock:
    """The scheduler lock of `engine`'s database, held by this process; raises SchedulerRunning
    when another process holds it."""
    lock = SchedulerLock(engine)
    lock.acquire()
    return lock
