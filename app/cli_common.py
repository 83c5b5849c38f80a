"""What every `prefloop` command module shares: the --data-dir option, errors, the runtime.

Kept apart from `app/cli.py` (which assembles the commands) so that each command module imports
on its own, as the benchmarks and tests do, without a cycle through the assembled CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from storage.runtime import Runtime, open_runtime
from storage.settings import SettingsError

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="PREFLOOP_DATA_DIR",
        help="Holds prefloop.toml, the SQLite database, checkpoints and logs.",
    ),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def runtime(data_dir: Path, **flags) -> Runtime:
    try:
        return open_runtime(data_dir, **flags)
    except SettingsError as exc:
        raise fail(str(exc)) from None
