"""One scheduler per database: the lock refuses a second holder, names the first, and dies with
its process (kill -9 included), on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from storage.scheduler_lock import SchedulerRunning, acquire_scheduler_lock

HOLD = """
import sys, time
from storage.db import make_engine
from storage.scheduler_lock import acquire_scheduler_lock
lock = acquire_scheduler_lock(make_engine(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _acquire_within(engine, seconds: float):
    """The lock, once it is free (a killed holder's server-side session ends a moment later)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return acquire_scheduler_lock(engine)
        except SchedulerRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_second_holder_is_refused_until_the_first_lets_go(engine):
    first = acquire_scheduler_lock(engine)
    with pytest.raises(SchedulerRunning, match=f"pid {os.getpid()}"):
        acquire_scheduler_lock(engine)
    first.release()
    second = acquire_scheduler_lock(engine)
    assert second.check()
    second.release()


def test_the_lock_dies_with_a_process_killed_outright(engine):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, _url(engine)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SchedulerRunning, match=f"pid {holder.pid}"):
            acquire_scheduler_lock(engine)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        lock = _acquire_within(engine, 30)
        assert lock.check()
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()


@pytest.mark.postgres
def test_a_lost_connection_takes_the_lock_again_unless_another_process_did(postgres_engine):
    lock = acquire_scheduler_lock(postgres_engine)

    def cut_the_lock_connection() -> None:
        # what a restart of the database does to the holder's session
        with postgres_engine.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'prefloop scheduler%' AND pid <> pg_backend_pid()"
                )
            )
            connection.commit()

    cut_the_lock_connection()
    assert lock.check()  # free again: taken on a new connection
    with pytest.raises(SchedulerRunning):
        acquire_scheduler_lock(postgres_engine)

    cut_the_lock_connection()
    other = _acquire_within(postgres_engine, 30)  # another process is quicker this time
    assert not lock.check()
    other.release()
    lock.release()
