"""Labeling guidelines on the command line: publish a new version from a Markdown file, show one.
Registered in app/cli.py as `prefloop guidelines ...`; publishing is audited."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli_common import DataDir, fail, runtime
from storage.settings import DEFAULT_DATA_DIR

guidelines_cli = typer.Typer(
    help="Labeling guidelines (Markdown) shown above every pair.", no_args_is_help=True
)


@guidelines_cli.command("set")
def guidelines_set(
    file: Annotated[Path, typer.Argument(help="A Markdown file (UTF-8).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Publish the file as the guidelines' next version: the labeling page shows it (opened
    again for everyone), and each label records the version it was made under."""
    from labeling.guidelines import publish

    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail(f"{file}: no such file") from None
    except UnicodeDecodeError as exc:
        raise fail(f"{file}: not UTF-8 (byte {exc.start})") from None
    rt = runtime(data_dir)
    try:
        version = publish(engine=rt.engine, text=text, user_id=None, via="cli")
    except ValueError as exc:
        raise fail(f"{file}: {exc}") from None
    typer.echo(f"guidelines version {version} published ({len(text):,} characters)")


@guidelines_cli.command("show")
def guidelines_show(
    version: Annotated[int | None, typer.Option(help="A version (default: in force).")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Print the guidelines in force (or one version) as Markdown, and the versions."""
    from storage import guidelines
    from storage.db import transaction

    rt = runtime(data_dir)
    with transaction(rt.engine, readonly=True) as session:
        versions = guidelines.history(session=session)
        if version is None:
            now = guidelines.current(session=session)
            text = None if now is None else now[1]
            version = None if now is None else now[0]
        else:
            text = guidelines.get_version(session=session, version=version)
    if text is None:
        raise fail("no guidelines yet" if version is None else f"no guidelines version {version}")
    typer.echo(text)
    listing = ", ".join(
        f"v{v} ({name or 'cli'}, {when:%Y-%m-%d %H:%M})" for v, name, when in versions
    )
    typer.echo(f"\n-- version {version}; versions: {listing}", err=True)
