"""storage/db.py: SQLite writers take turns across processes, not only across threads."""

from __future__ import annotations

import subprocess
import sys
import time

from storage.db import make_engine, sqlite_url, transaction

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
