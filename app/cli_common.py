"""What every `prefloop` command module shares: the --data-dir option, errors, the runtime.

Kept apart from `app/cli.py` (which assembles the commands) so that each command module imports
on its own, as the benchmarks and tests do, without a cycle through the assembled CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from storage.db import current_revision, head_revision, is_sqlite
from storage.runtime import Runtime, open_runtime
from storage.settings import DEFAULT_DATA_DIR, SettingsError

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="PREFLOOP_DATA_DIR",
        help="Holds prefloop.toml, the SQLite database, checkpoints and logs.",
    ),
]

# Simulated annotators' both-bad threshold (`label --simulate`, `loop --simulate`).
BothBadBelow = Annotated[
    float | None,
    typer.Option(
        help="Label a pair both bad when both replies score below this, in the judge's own "
        "units (default: never; only the difference of two scores matters)."
    ),
]


# Simulated annotators who answer at random on a share of their pairs (`--careless 3=0.5`).
Careless = Annotated[
    list[str] | None,
    typer.Option(
        "--careless",
        help="K=SHARE: simulated annotator sim-K answers A or B at random on SHARE of its pairs "
        "(repeatable), e.g. 3=0.5.",
    ),
]


def parse_careless(values: list[str] | None) -> dict[int, float]:
    """`--careless` values as {annotator number: share}, or fail naming the bad one."""
    careless: dict[int, float] = {}
    for value in values or []:
        number, _, share = value.partition("=")
        try:
            careless[int(number)] = float(share)
        except ValueError:
            raise fail(f"--careless {value!r}: expected K=SHARE, e.g. 3=0.5") from None
        if careless[int(number)] != careless[int(number)] or not 0 <= careless[int(number)] <= 1:
            raise fail(f"--careless {value!r}: SHARE is within [0, 1]")
    return careless


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def data_dir_flag(data_dir: Path) -> str:
    """` --data-dir DIR` for a command to suggest, empty for the default directory."""
    return "" if Path(data_dir) == DEFAULT_DATA_DIR else f" --data-dir {data_dir}"


def runtime(data_dir: Path, *, needs_schema: bool = True, **flags) -> Runtime:
    """The settings and engine of `data_dir`; unless `needs_schema` is False (init, db upgrade),
    fail when the database has no schema or an older one, rather than on the first query."""
    try:
        rt = open_runtime(data_dir, **flags)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    if needs_schema:
        require_schema(rt)
    return rt


def require_schema(rt: Runtime) -> None:
    """Fail unless the database is at this release's schema (checking creates no SQLite file)."""
    revision = current_revision(rt.engine)
    if revision == head_revision():
        return
    flag = data_dir_flag(rt.settings.data_dir)
    if is_sqlite(rt.engine):
        where = f"{rt.settings.data_dir} has"
    else:
        where = f"the database {rt.engine.url.render_as_string(hide_password=True)} has"
    if revision is None:
        raise fail(
            f"{where} no prefloop database: run `prefloop init{flag}` "
            f"(or `prefloop db upgrade{flag}`)"
        )
    raise fail(
        f"{where} schema revision {revision}, this release's is {head_revision()}: "
        f"run `prefloop db upgrade{flag}`"
    )
