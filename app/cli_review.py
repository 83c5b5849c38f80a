"""Disagreement review on the command line: the pairs whose labels disagree, and settling one.
Registered in app/cli.py as `prefloop review ...`; a decision is audited."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.cli_common import DataDir, fail, runtime
from storage import crud
from storage.settings import DEFAULT_DATA_DIR

review_cli = typer.Typer(
    help="Pairs whose labels disagree, settled by an admin's decision.", no_args_is_help=True
)

CHOICES = ("a", "b", "tie", "both_bad")


@review_cli.command("list")
def review_list(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Pairs to show.")] = 20,
    include_settled: Annotated[
        bool, typer.Option("--include-settled", help="Also the pairs settled already.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """The oldest pairs whose human labels disagree, with both texts and every label (choice
    about the pair's a and b, and the reason given)."""
    from labeling.review import detail_record, disputed

    rt = runtime(data_dir)
    total, pairs = disputed(engine=rt.engine, limit=limit, include_settled=include_settled)
    if as_json:
        typer.echo(json.dumps({"total": total, "pairs": [detail_record(p) for p in pairs]}))
        return
    typer.echo(
        f"{total} pairs whose labels disagree{' (settled included)' if include_settled else ''}"
    )
    for p in pairs:
        typer.echo(f"\npair {p.pair_id} ({p.status}): {p.prompt[:200]!r}")
        typer.echo(f"  a: {p.a[:300]!r}")
        typer.echo(f"  b: {p.b[:300]!r}")
        for lab in p.labels:
            who = lab.annotator or lab.source
            reason = f" ({lab.reason!r})" if lab.reason else ""
            typer.echo(f"  {lab.source:<6} {who:<20} {lab.choice}{reason}")


@review_cli.command("settle")
def review_settle(
    pair_id: Annotated[int, typer.Argument(help="The pair's id.", min=1)],
    choice: Annotated[
        str, typer.Option("--choice", help="a, b, tie or both_bad (about the pair's a and b).")
    ],
    admin: Annotated[
        str | None,
        typer.Option("--as", help="The admin who decides (a user name); default: none named."),
    ] = None,
    note: Annotated[str | None, typer.Option(help="Why (kept with the decision).")] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Settle a pair: the admin's choice decides it for DPO training and the export, whatever
    its labels say (a new decision replaces the last)."""
    from labeling.review import settle
    from storage.db import transaction
    from storage.models import Role

    if choice not in CHOICES:
        raise fail(f"--choice {choice!r}: expected one of {', '.join(CHOICES)}")
    rt = runtime(data_dir)
    user_id = None
    if admin is not None:
        with transaction(rt.engine, readonly=True) as session:
            user = crud.get_user_by_name(session=session, name=admin)
        if user is None or user.role != Role.admin or not user.active:
            raise fail(f"--as {admin!r}: no active admin of that name")
        user_id = user.id
    try:
        settle(
            engine=rt.engine, pair_id=pair_id, choice=choice, user_id=user_id, via="cli", note=note
        )
    except (crud.NotFound, crud.Conflict, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"pair {pair_id} settled: {choice}" + (f" (by {admin})" if admin else ""))
