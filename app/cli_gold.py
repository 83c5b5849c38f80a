"""Gold pairs on the command line: import, mark and unmark pairs, the annotators' gold accuracy,
lift a flag. Registered in app/cli.py as `prefloop gold ...`; every change is audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli_common import DataDir, fail, runtime
from storage import crud
from storage.settings import DEFAULT_DATA_DIR

gold_cli = typer.Typer(
    help="Gold pairs: known answers mixed into the queue to measure annotators.",
    no_args_is_help=True,
)

ANSWERS = ("a", "b", "tie", "both_bad")


@gold_cli.command("import")
def gold_import(
    file: Annotated[
        Path,
        typer.Argument(help="JSONL (or a .json array), CSV, Parquet or a datasets directory."),
    ],
    prompt_field: Annotated[str, typer.Option(help="Prompt: text or chat messages.")] = "prompt",
    a_field: Annotated[str, typer.Option(help="The first response.")] = "a",
    b_field: Annotated[str, typer.Option(help="The second response.")] = "b",
    answer_field: Annotated[
        str, typer.Option(help="The known answer: a, b, tie or both_bad.")
    ] = "answer",
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Import gold pairs (prompt, a, b, answer). They are shown to every annotator once, at
    labeling.gold_rate, and never become preference data. A bad file imports nothing."""
    from labeling.gold import import_gold
    from labeling.importing import ImportFileError, read_gold

    try:
        items = read_gold(
            file,
            prompt_field=prompt_field,
            a_field=a_field,
            b_field=b_field,
            answer_field=answer_field,
        )
    except ImportFileError as exc:
        raise fail(str(exc)) from None
    rt = runtime(data_dir)
    added, skipped = import_gold(
        engine=rt.engine, items=items, user_id=None, via="cli", file=str(file)
    )
    typer.echo(f"{file}: {added} gold pairs added, {skipped} duplicates skipped")


@gold_cli.command("mark")
def gold_mark(
    pair_id: Annotated[int, typer.Argument(help="The pair's id.", min=1)],
    answer: Annotated[str, typer.Option("--answer", help="a, b, tie or both_bad.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Mark a preference pair as gold with its answer: it is queued for every annotator who has
    not had it, and its labels leave the preference data."""
    from labeling.gold import mark

    if answer not in ANSWERS:
        raise fail(f"--answer {answer!r}: expected one of {', '.join(ANSWERS)}")
    rt = runtime(data_dir)
    try:
        mark(engine=rt.engine, pair_id=pair_id, answer=answer, user_id=None, via="cli")
    except (crud.NotFound, crud.Conflict) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"pair {pair_id} is a gold pair (answer {answer})")


@gold_cli.command("unmark")
def gold_unmark(
    pair_id: Annotated[int, typer.Argument(help="The gold pair's id.", min=1)],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Undo a gold pair: a marked pair is an ordinary pair again, an imported one is withdrawn;
    its labels no longer count toward gold accuracy."""
    from labeling.gold import unmark

    rt = runtime(data_dir)
    try:
        unmark(engine=rt.engine, pair_id=pair_id, user_id=None, via="cli")
    except crud.NotFound as exc:
        raise fail(str(exc)) from None
    typer.echo(f"pair {pair_id} is no longer a gold pair")


@gold_cli.command("status")
def gold_status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Each annotator's gold accuracy and count, and who is flagged (labels left out of
    training, the proxy's refit and the export while labeling.gold_filter is on)."""
    from labeling.gold import standing, standing_record
    from storage import gold
    from storage.db import transaction

    rt = runtime(data_dir)
    labeling = rt.effective_settings().labeling
    rows = [standing_record(s, labeling) for s in standing(engine=rt.engine, labeling=labeling)]
    with transaction(rt.engine, readonly=True) as session:
        counts = gold.gold_counts(session=session)
    report = {
        "gold_pairs": counts["pairs"],
        "gold_labels": counts["labels"],
        "gold_rate": labeling.gold_rate,
        "min_gold_accuracy": labeling.min_gold_accuracy,
        "min_gold_seen": labeling.min_gold_seen,
        "gold_filter": labeling.gold_filter,
        "annotators": rows,
    }
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(
        f"{counts['pairs']} gold pairs, {counts['labels']} gold labels; shown at "
        f"{labeling.gold_rate:g}; flagged under {labeling.min_gold_accuracy:g} after "
        f"{labeling.min_gold_seen} ({'left out' if labeling.gold_filter else 'flag only'})"
    )
    typer.echo(f"{'annotator':<24} {'gold':>5} {'right':>6} {'accuracy':>9}  flag")
    for r in rows:
        accuracy = "n/a" if r["gold_accuracy"] is None else f"{r['gold_accuracy']:.3f}"
        flag = "FLAGGED" if r["flagged"] else ""
        if r["counted_since"]:
            flag += f" (counted since {r['counted_since'][:19]}: {r['counted_seen']})"
        typer.echo(
            f"{r['name']:<24} {r['gold_seen']:>5} {r['gold_correct']:>6} {accuracy:>9}  {flag}"
        )


@gold_cli.command("lift")
def gold_lift(
    name: Annotated[str, typer.Argument(help="The annotator's user name.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Lift an annotator's flag: their labels count again, and their gold accuracy counts afresh
    from now (labeling.min_gold_seen new gold labels before it may flag them again)."""
    from labeling.gold import lift

    rt = runtime(data_dir)
    try:
        lift(engine=rt.engine, name=name, user_id=None, via="cli")
    except crud.NotFound as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{name}: flag lifted; gold accuracy counts afresh from now")
