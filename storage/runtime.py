"""What a command or the server needs to run: the settings and an engine for them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage import crud
from storage.db import make_engine, transaction
from storage.settings import Settings, load_settings, with_overrides


@dataclass
class Runtime:
    settings: Settings  # file, environment and flags; see `effective_settings` for run time
    engine: Engine
    # (base settings, overrides as JSON, effective settings) of the last call: validating
    # Settings costs milliseconds, and the overrides rarely change
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def effective_settings(self, session: Session | None = None) -> Settings:
        """The settings with the changes admins made at run time (the `setting` table), read in
        `session` when given (the caller's transaction: no second one per request), else in a
        read transaction of its own. The one place the overrides are layered over the file's
        settings: the CLI, the scheduler, the UI and the API all call it."""
        if session is None:
            with transaction(self.engine, readonly=True) as own:
                return self.effective_settings(own)
        overrides = crud.get_overrides(session=session)
        if not overrides:
            return self.settings
        key = json.dumps(overrides, sort_keys=True, default=str)
        memo = self._memo.get("last")
        if memo is None or memo[0] is not self.settings or memo[1] != key:
            memo = (self.settings, key, with_overrides(self.settings, overrides))
            self._memo["last"] = memo
        return memo[2]


def open_runtime(data_dir: Path | str | None = None, **flags: Any) -> Runtime:
    settings = load_settings(data_dir, **flags)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Runtime(
        settings=settings,
        engine=make_engine(settings.resolved_database_url, pool=settings.database),
    )
