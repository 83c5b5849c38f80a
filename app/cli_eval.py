"""Human evaluation on the command line: queue evaluation pairs, the leaderboard, export the votes.
Registered in app/cli.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli_common import DataDir, fail, runtime
from storage import crud
from storage.db import transaction
from storage.settings import DEFAULT_DATA_DIR


def eval_pairs(
    a: Annotated[int, typer.Option("--a", help="A policy version.")],
    b: Annotated[int, typer.Option("--b", help="The version to compare it with.")],
    prompts: Annotated[
        int | None,
        typer.Option(
            "--prompts", min=1, help="Held-out prompts to queue (default: eval.human_prompts)."
        ),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Queue blind evaluation pairs of two policy versions' replies to held-out prompts, for
    annotators to vote on (mixed into their queues at eval.human_share). Samples a version the
    automatic evaluation has not sampled yet; asking again adds only what is missing."""
    from training.human_eval import queue_eval_pairs

    rt = runtime(data_dir)
    try:
        report = queue_eval_pairs(
            engine=rt.engine,
            settings=rt.effective_settings(),
            a_version=a,
            b_version=b,
            n_prompts=prompts,
        )
    except (ValueError, RuntimeError, crud.NotFound) as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"v{report['a']} vs v{report['b']}: {report['added']} evaluation pairs queued on "
        f"{report['prompts']} held-out prompts ({report['present']} queued before, "
        f"{report['identical']} with the same reply from both left out)"
    )


def leaderboard(
    as_json: Annotated[bool, typer.Option("--json", help="The leaderboard as JSON.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """The policy versions rated by the human evaluation votes: Bradley-Terry ratings (pi_0 at
    1000) with 95% bootstrap intervals, votes, and the win-rate against pi_0."""
    from training.human_eval import human_leaderboard

    rt = runtime(data_dir)
    board = human_leaderboard(engine=rt.engine, settings=rt.effective_settings())
    if as_json:
        typer.echo(json.dumps(board.as_dict()))
        return
    if not board.ratings:
        typer.echo("no evaluation votes yet: `prefloop eval-pairs --a V --b W` queues some")
        return
    status = board.meta.get("status", {})
    typer.echo(
        f"{board.votes} votes, pi_0 = v{board.anchor} at 1000, 95% intervals from "
        f"{board.resamples} bootstrap resamples"
    )
    typer.echo(
        f"{'rank':>4}  {'version':<8} {'rating':>7}  {'95% interval':<15} {'votes':>6}  "
        f"win-rate vs v{board.anchor}"
    )
    for rank, r in enumerate(board.ratings, 1):
        versus = (
            "-"
            if r.win_rate_vs_anchor is None
            else f"{r.win_rate_vs_anchor:.3f} ({r.votes_vs_anchor})"
        )
        name = f"v{r.version}"
        typer.echo(
            f"{rank:>4}  {name:<8} {r.rating:>7.1f}  {f'{r.lower:.0f}..{r.upper:.0f}':<15} "
            f"{r.votes:>6}  {versus}  {status.get(r.version) or ''}"
        )


def eval_export(
    out: Annotated[Path, typer.Option("--out", help="The file to write.")],
    format: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Export every evaluation vote: prompt, both replies, their versions, the choice."""
    from labeling.export import ExportError
    from labeling.vote_export import FORMATS, export_votes

    if format not in [f.value for f in FORMATS]:
        raise fail(f"--format {format!r}: expected jsonl or parquet")
    rt = runtime(data_dir)
    try:
        result = export_votes(engine=rt.engine, out=out, format=format)
    except ExportError as exc:
        raise fail(str(exc)) from None
    with transaction(rt.engine) as session:
        crud.record_audit(
            session=session,
            user_id=None,
            action="eval.export",
            detail={"out": str(out), "format": format, "rows": result.rows},
        )
    typer.echo(f"exported {result.rows} evaluation votes to {out} ({format})")
