"""Datasets in and out on the command line: prompt and seed-preference imports, exports, API
tokens. Registered in app/cli.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli_common import DataDir, fail, runtime
from storage import crud
from storage.db import transaction
from storage.gold import GoldRule
from storage.models import Split
from storage.settings import DEFAULT_DATA_DIR

prefs_cli = typer.Typer(help="Preference datasets: seed imports.", no_args_is_help=True)

SOURCES = ("human", "proxy", "seed")
IMPORT_FILE_HELP = (
    "JSONL file (or a .json array), CSV or Parquet file, or a saved datasets directory."
)


def prompts_import(
    file: Annotated[Path, typer.Argument(help=IMPORT_FILE_HELP)],
    text_field: Annotated[str, typer.Option(help="Field or column holding the prompt.")] = "prompt",
    messages_field: Annotated[
        str, typer.Option(help="Field holding the prompt as chat messages (when no text).")
    ] = "messages",
    eval_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.99, help="Hold this share out as eval prompts (deterministic)."
        ),
    ] = 0.0,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Import prompts; duplicates are skipped and counted. A bad file imports nothing."""
    from labeling.importing import ImportFileError, read_prompt_rows
    from labeling.iteration import unanswerable, unanswerable_note

    try:
        rows = read_prompt_rows(
            file, text_field=text_field, messages_field=messages_field, eval_share=eval_share
        )
    except ImportFileError as exc:
        raise fail(str(exc)) from None
    places, records = zip(*rows, strict=True)
    rt = runtime(data_dir)
    found = unanswerable(engine=rt.engine, settings=rt.effective_settings(), prompts=records)
    with transaction(rt.engine) as session:
        added, skipped = crud.add_prompts(session=session, prompts=records)
        crud.record_audit(
            session=session,
            user_id=None,
            action="prompts.import",  # as the admin view's upload records it
            detail={"file": str(file), "added": added, "skipped": skipped},
        )
    n_eval = sum(1 for r in records if r.split == Split.eval)
    typer.echo(
        f"{file}: {added} prompts added, {skipped} duplicates skipped ({n_eval} of the file eval)"
    )
    if found:
        typer.echo(f"{file}: {unanswerable_note(found, places)}", err=True)


def prompts_list(
    split: Annotated[str | None, typer.Option(help="train or eval. Default: both.")] = None,
    inactive: Annotated[bool, typer.Option(help="Only the prompts taken out of rounds.")] = False,
    contains: Annotated[str | None, typer.Option(help="Only prompts holding this text.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Prompts by id: split, active, source and the start of the text."""
    if split is not None and split not in {s.value for s in Split}:
        raise fail(f"--split: expected train or eval, got {split!r}")
    rt = runtime(data_dir)
    with transaction(rt.engine, readonly=True) as session:
        prompts = crud.list_prompts(
            session=session,
            split=None if split is None else Split(split),
            active=False if inactive else None,
            contains=contains,
            limit=limit,
        )
    typer.echo(f"{'id':>6}  split  active  {'source':<24}  text")
    for p in prompts:
        text = " ".join(p.text.split())
        text = text[:70] + ("..." if len(text) > 70 else "")
        active = "yes" if p.active else "no"
        typer.echo(f"{p.id:>6}  {p.split.value:<5}  {active:<6}  {p.source[:24]:<24}  {text}")


def _set_active(ids: list[int], active: bool, data_dir) -> None:
    rt = runtime(data_dir)
    action = "prompts.activate" if active else "prompts.deactivate"
    try:
        with transaction(rt.engine) as session:
            changed = crud.set_prompts_active(session=session, ids=ids, active=active)
            crud.record_audit(
                session=session, user_id=None, action=action, detail={"ids": sorted(set(ids))}
            )
    except crud.NotFound as exc:
        raise fail(f"{exc}: nothing changed") from None
    state = "back in" if active else "taken out of"
    unchanged = len(set(ids)) - changed
    already = f" ({unchanged} {'active' if active else 'inactive'} already)" if unchanged else ""
    typer.echo(f"{changed} prompts {state} rounds and evaluations{already}")


PromptIds = Annotated[list[int], typer.Argument(help="Prompt ids (`prefloop prompts list`).")]


def prompts_deactivate(ids: PromptIds, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Take prompts out of rounds and evaluations (kept, with their pairs and labels). Audited."""
    _set_active(ids, False, data_dir)


def prompts_activate(ids: PromptIds, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Put deactivated prompts back into rounds and evaluations. Audited."""
    _set_active(ids, True, data_dir)


@prefs_cli.command("import")
def prefs_import(
    file: Annotated[Path, typer.Argument(help=IMPORT_FILE_HELP)],
    prompt_field: Annotated[str, typer.Option(help="Prompt: text or chat messages.")] = "prompt",
    chosen_field: Annotated[str, typer.Option(help="The preferred response.")] = "chosen",
    rejected_field: Annotated[str, typer.Option(help="The other response.")] = "rejected",
    refit: Annotated[
        bool,
        typer.Option(help="Refit the embedded proxy on every seed and human label afterwards."),
    ] = True,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Import a seed preference dataset (standard or conversational) for the first DPO round,
    and refit the embedded proxy on it, so that the next round pairs by its scores and shows its
    suggestions. A bad file imports nothing."""
    from labeling.importing import ImportFileError, read_preferences
    from storage.preferences import add_seed_preferences

    try:
        records = read_preferences(
            file,
            prompt_field=prompt_field,
            chosen_field=chosen_field,
            rejected_field=rejected_field,
        )
    except ImportFileError as exc:
        raise fail(str(exc)) from None
    rt = runtime(data_dir)
    with transaction(rt.engine) as session:
        added, skipped = add_seed_preferences(session=session, items=records)
        crud.record_audit(
            session=session,
            user_id=None,
            action="prefs.import",
            detail={"file": str(file), "added": added, "skipped": skipped},
        )
    typer.echo(f"{file}: {added} seed preferences added, {skipped} duplicates skipped")
    if refit and added and rt.settings.proxy.kind == "embedded":
        _refit_after_import(rt)


def _refit_after_import(rt) -> None:
    from labeling.proxy import MIN_LABELS, human_comparisons, refit_proxy

    version = refit_proxy(engine=rt.engine, settings=rt.settings)
    if version is None:
        gold = GoldRule.filtering(rt.settings.labeling)
        n = len(human_comparisons(engine=rt.engine, gold=gold))
        typer.echo(f"proxy: not refit, {n} comparisons (it needs {MIN_LABELS})")
    else:
        typer.echo(f"proxy v{version.version}: fitted on {version.n_labels} labels")


def export(
    out: Annotated[Path, typer.Option("--out", help="File (jsonl, parquet) or directory (hf).")],
    format: Annotated[str, typer.Option("--format", help="jsonl, parquet or hf.")] = "parquet",
    layout: Annotated[
        str, typer.Option(help="standard (strings) or conversational (messages).")
    ] = "standard",
    iteration: Annotated[
        list[int] | None,
        typer.Option(
            "--iteration", min=0, help="Only this iteration k (repeatable). Default: all."
        ),
    ] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(help="human, proxy, seed or all (repeatable). Default: all."),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Least share of labels agreeing.")
    ] = 0.0,
    annotator: Annotated[
        list[str] | None,
        typer.Option("--annotator", help="Count only this user's labels (repeatable)."),
    ] = None,
    split: Annotated[Split | None, typer.Option(help="Only prompts of this split.")] = None,
    criterion: Annotated[
        str | None,
        typer.Option(
            help="Decide each pair by its labels' judgments on this criterion of "
            "labeling.criteria (default: the overall choice)."
        ),
    ] = None,
    include_flagged: Annotated[
        bool,
        typer.Option(
            "--include-flagged",
            help="Count the labels of annotators flagged by their gold accuracy too (left out "
            "by default while labeling.gold_filter is on).",
        ),
    ] = False,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", help="Then push to this Hub dataset repo.")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Export the decided preferences for TRL's DPOTrainer or the Hugging Face Hub."""
    from labeling.export import (
        ExportError,
        ExportFilters,
        ExportFormat,
        HubPushError,
        Layout,
        export_preferences,
    )
    from labeling.export import push_to_hub as push

    if format not in ExportFormat.__members__:
        raise fail(f"--format {format!r}: expected one of jsonl, parquet, hf")
    if layout not in Layout.__members__:
        raise fail(f"--layout {layout!r}: expected standard or conversational")
    sources = tuple(source or ["all"])
    if "all" in sources:
        sources = SOURCES
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise fail(f"--source {sorted(unknown)}: expected human, proxy, seed or all")
    rt = runtime(data_dir)
    labeling = rt.effective_settings().labeling
    if criterion is not None and criterion not in labeling.criteria:
        raise fail(f"--criterion {criterion!r}: not among labeling.criteria {labeling.criteria}")
    filters = ExportFilters(
        iterations=iteration or None,
        sources=sources,
        min_agreement=min_agreement,
        annotators=annotator or None,
        split=split,
        gold=None if include_flagged else GoldRule.filtering(labeling),
        criterion=criterion,
    )
    try:
        result = export_preferences(
            engine=rt.engine,
            out=out,
            format=format,
            layout=layout,
            filters=filters,
            criteria=labeling.criteria,
        )
    except ExportError as exc:
        raise fail(str(exc)) from None
    with transaction(rt.engine) as session:
        crud.record_audit(
            session=session,
            user_id=None,
            action="export",
            detail={"out": str(out), "format": format, "rows": result.rows, **filters.as_dict()},
        )
    typer.echo(f"exported {result.rows} preferences to {out} ({format}, {layout})")
    if push_to_hub:
        try:
            url = push(out, format=format, repo=push_to_hub)
        except HubPushError as exc:
            raise fail(str(exc)) from None
        typer.echo(f"pushed to {url}")


def users_token(name: str, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Issue a new API token for a user (shown once; replaces the previous one)."""
    from app.auth import generate_token, hash_token

    token = generate_token()
    rt = runtime(data_dir)
    with transaction(rt.engine) as session:
        user = crud.get_user_by_name(session=session, name=name)
        if user is None:
            raise fail(f"no user {name!r}")
        crud.update_user(session=session, user_id=user.id, token_hash=hash_token(token))
        crud.record_audit(session=session, user_id=None, action="user.token", detail={"name": name})
    typer.echo(f"API token of {name!r}: {token}  (shown once; send it as 'Authorization: Bearer')")
