"""The scheduler keeps its jobs in prefloop's database under fixed ids, across restarts."""

from __future__ import annotations

import sqlalchemy as sa

from app.scheduler import DISPATCH, JOBS_TABLE, TRAIN_CRON, TRAIN_INTERVAL, start_scheduler
from storage.db import upgrade
from storage.runtime import open_runtime


def _stored_ids(engine):
    with engine.connect() as connection:
        rows = connection.execute(sa.text(f"SELECT id FROM {JOBS_TABLE} ORDER BY id"))
        return [row[0] for row in rows]


def test_jobs_persist_across_restarts_and_follow_settings(tmp_path, database):
    rt = open_runtime(tmp_path, loop={"interval_minutes": 30, "quota_check_seconds": 3600})
    upgrade(rt.engine)
    handle = start_scheduler(rt)
    try:
        assert sorted(j.id for j in handle.scheduler.get_jobs()) == [DISPATCH, TRAIN_INTERVAL]
    finally:
        handle.shutdown()
    assert _stored_ids(rt.engine) == [DISPATCH, TRAIN_INTERVAL]  # in the database, not memory

    # a restart with other settings: the cron job replaces the interval one, same ids throughout
    rt2 = open_runtime(tmp_path, loop={"cron": "0 3 * * *", "quota_check_seconds": 3600})
    handle = start_scheduler(rt2)
    try:
        cron = handle.scheduler.get_job(TRAIN_CRON)
        assert cron.next_run_time.hour == 3
        assert handle.scheduler.get_job(TRAIN_INTERVAL) is None
    finally:
        handle.shutdown()
    assert _stored_ids(rt2.engine) == [DISPATCH, TRAIN_CRON]
