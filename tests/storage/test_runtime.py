"""Runtime.effective_settings: the one place admins' run-time overrides meet the file's settings."""

from __future__ import annotations

from storage import crud
from storage.db import transaction
from storage.runtime import Runtime
from storage.settings import load_settings


def test_overrides_apply_in_the_callers_transaction_or_in_one_of_its_own(sqlite_engine, tmp_path):
    rt = Runtime(settings=load_settings(tmp_path), engine=sqlite_engine)
    assert rt.effective_settings() is rt.settings  # no overrides: the file's settings
    assert rt.settings.labeling.paused is False

    with transaction(sqlite_engine) as session:
        crud.set_overrides(session=session, values={"labeling.paused": True}, user_id=None)
        # read in the caller's transaction: the override it has just written counts
        assert rt.effective_settings(session).labeling.paused is True
    effective = rt.effective_settings()
    assert effective.labeling.paused is True
    assert rt.settings.labeling.paused is False  # the file's settings are never changed
    assert rt.effective_settings() is effective  # the same overrides: validated once

    with transaction(sqlite_engine) as session:
        crud.set_overrides(session=session, values={"labeling.lease_seconds": 77}, user_id=None)
    changed = rt.effective_settings()
    assert changed is not effective
    assert (changed.labeling.paused, changed.labeling.lease_seconds) == (True, 77)
