"""What a command or the server needs to run: the settings and an engine for them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from storage import crud
from storage.db import make_engine, transaction
from storage.settings import Settings, load_settings, with_overrides


@dataclass
class Runtime:
    settings: Settings  # file, environment and flags; see `effective_settings` for run time
    engine: Engine

    def effective_settings(self) -> Settings:
        """The settings with the changes admins made at run time (the `setting` table)."""
        with transaction(self.engine, readonly=True) as session:
            overrides = crud.get_overrides(session=session)
        return with_overrides(self.settings, overrides) if overrides else self.settings


def open_runtime(data_dir: Path | str | None = None, **flags: Any) -> Runtime:
    settings = load_settings(data_dir, **flags)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Runtime(
        settings=settings,
        engine=make_engine(settings.resolved_database_url, pool=settings.database),
    )
