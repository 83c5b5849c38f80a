"""Admin view, data: prompt upload (JSONL, JSON, CSV or Parquet, all or nothing, errors with the
line or row) and the preference export download, with the CLI's filters (sources, iterations,
min agreement, annotators, split, whether annotators flagged by their gold accuracy count)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape
from storage import crud
from storage.db import transaction
from storage.gold import GoldRule
from storage.models import Role, Split
from storage.preferences import ALL_SOURCES

if TYPE_CHECKING:
    from labeling.export import ExportFilters

EXPORT_KEEP_SECONDS = 600
SPLITS = ("all", "train", "eval")


def _ok(text: str) -> str:
    return f'<span class="pf-ok">{escape(text)}</span>'


def _error(text: str) -> str:
    return f'<pre class="pf-error" role="alert">{escape(text)}</pre>'


def _warning(text: str) -> str:
    return f'<p class="pf-warning" role="status">{escape(text)}</p>'


def upload_prompts(ctx: AppContext, admin_id: int, path: str, name: str, text_field: str) -> str:
    from labeling.importing import ImportFileError, read_prompt_rows
    from labeling.iteration import unanswerable, unanswerable_note

    try:
        rows = read_prompt_rows(path, text_field=text_field or "prompt")
    except ImportFileError as exc:
        # Name the file as the admin knows it, not Gradio's temporary copy.
        where = name + (f", {exc.unit} {exc.line}" if exc.line else "")
        where += f", field {exc.field!r}" if exc.field else ""
        return _error(f"{where}: {exc.problem}. Nothing was imported.")
    places, records = zip(*rows, strict=True)
    settings = ctx.rt.effective_settings()
    found = unanswerable(engine=ctx.rt.engine, settings=settings, prompts=records)
    with transaction(ctx.rt.engine) as session:
        added, skipped = crud.add_prompts(session=session, prompts=records)
        crud.record_audit(
            session=session,
            user_id=admin_id,
            action="prompts.import",
            detail={"file": name, "added": added, "skipped": skipped},
        )
    done = _ok(f"{name}: {added} prompts added, {skipped} duplicates skipped.")
    return done + (_warning(f"{name}: {unanswerable_note(found, places)}") if found else "")


def _items(value: Any, field: str) -> list[str]:
    """A comma-separated box's entries; empty: none."""
    if value is None:
        return []
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected text, got {type(value).__name__}")
    return [item.strip() for item in value.split(",") if item.strip()]


def read_export_filters(
    ctx: AppContext,
    *,
    sources: Any,
    iterations: Any,
    min_agreement: Any,
    annotators: Any,
    split: Any,
    include_flagged: Any = False,
) -> ExportFilters:
    """The export panel's inputs as ExportFilters, or ValueError naming the field. Everything is
    checked here: a Gradio event can be called with any values, whatever the page allows."""
    from labeling.export import ExportFilters

    if not isinstance(sources, list | tuple) or not sources:
        raise ValueError("Sources: pick at least one label source.")
    if any(source not in ALL_SOURCES for source in sources):
        raise ValueError(f"Sources: expected some of {', '.join(ALL_SOURCES)}, got {list(sources)}")
    ks = []
    for item in _items(iterations, "Iterations"):
        if not (item.isascii() and item.isdigit()):
            raise ValueError(f"Iterations: {item!r} is no iteration k (a whole number >= 0)")
        ks.append(int(item))
    if min_agreement is None:
        min_agreement = 0.0
    if (
        isinstance(min_agreement, bool)
        or not isinstance(min_agreement, int | float)
        or not 0.0 <= min_agreement <= 1.0
    ):
        raise ValueError(f"Min agreement: expected a number from 0 to 1, got {min_agreement!r}")
    names = _items(annotators, "Annotators")
    if split not in SPLITS:
        raise ValueError(f"Split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if include_flagged is not None and not isinstance(include_flagged, bool):
        raise ValueError(
            f"Include flagged annotators: expected true or false, got {include_flagged!r}"
        )
    with transaction(ctx.rt.engine, readonly=True) as session:
        known_ks = {iteration.k for iteration in crud.list_iterations(session=session)}
        known_names = {user.name for user in crud.list_users(session=session)}
    if missing := sorted(set(ks) - known_ks):
        raise ValueError(f"Iterations: no iteration {', '.join(map(str, missing))}")
    if missing := [name for name in names if name not in known_names]:
        raise ValueError(f"Annotators: no user named {', '.join(map(repr, missing))}")
    return ExportFilters(
        iterations=ks or None,
        sources=tuple(sources),
        min_agreement=float(min_agreement),
        annotators=names or None,
        split=None if split == "all" else Split(split),
        gold=None if include_flagged else GoldRule.filtering(ctx.rt.effective_settings().labeling),
    )


def build_data(ctx: AppContext):
    """Components and events of the data tab; returns (refresh function, its outputs)."""

    def upload(file: str | None, text_field: str, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        if not file:
            return _error("Choose a prompt file first (.jsonl, .json, .csv or .parquet).")
        return upload_prompts(ctx, admin.id, file, Path(file).name, text_field)

    def export(
        fmt: str,
        layout: str,
        sources: list[str],
        iterations: str,
        min_agreement: float | None,
        annotators: str,
        split: str,
        include_flagged: bool,
        request: gr.Request,
    ):
        admin = require_user(ctx, request, role=Role.admin)
        from labeling.export import export_file

        try:
            filters = read_export_filters(
                ctx,
                sources=sources,
                iterations=iterations,
                min_agreement=min_agreement,
                annotators=annotators,
                split=split,
                include_flagged=include_flagged,
            )
            result = export_file(
                engine=ctx.rt.engine,
                format=fmt,
                layout=layout,
                filters=filters,
                criteria=ctx.rt.effective_settings().labeling.criteria,
            )
        except ValueError as exc:  # ExportError too: nothing to export
            return _error(str(exc)), None
        # Gradio copies the file into its cache once this returns; drop ours a while later.
        cleanup = threading.Timer(EXPORT_KEEP_SECONDS, shutil.rmtree, [result.path.parent, True])
        cleanup.daemon = True
        cleanup.start()
        with transaction(ctx.rt.engine) as session:
            crud.record_audit(
                session=session,
                user_id=admin.id,
                action="export",
                detail={"format": fmt, "layout": layout, "rows": result.rows, **result.filters},
            )
        return _ok(f"{result.rows} preference pairs exported."), str(result.path)

    with gr.Row():
        with gr.Column():
            gr.Markdown("**Upload prompts** (JSONL or CSV; a bad file imports nothing)")
            file = gr.File(
                label="Prompt file",
                file_types=[".jsonl", ".json", ".csv", ".parquet"],
                type="filepath",
            )
            text_field = gr.Textbox("prompt", label="Field or column holding the prompt")
            upload_button = gr.Button("Import prompts", elem_id="pf-import")
            upload_result = html(elem_id="pf-import-result")
        with gr.Column():
            gr.Markdown("**Export preferences** (prompt, chosen, rejected)")
            fmt = gr.Radio(
                ["jsonl", "parquet", "hf"],
                value="jsonl",
                label="Format",
                info="hf: a datasets directory (load_from_disk), zipped",
            )
            layout = gr.Radio(["standard", "conversational"], value="standard", label="Layout")
            sources = gr.CheckboxGroup(list(ALL_SOURCES), value=list(ALL_SOURCES), label="Sources")
            with gr.Row():
                iterations = gr.Textbox(label="Iterations", placeholder="all, or k's: 0, 2")
                annotators = gr.Textbox(label="Annotators", placeholder="all, or names: ann, bob")
            with gr.Row():
                min_agreement = gr.Number(
                    0.0, minimum=0.0, maximum=1.0, step=0.05, label="Min agreement"
                )
                split = gr.Dropdown(list(SPLITS), value="all", label="Split (of the prompts)")
            include_flagged = gr.Checkbox(
                False,
                label="Include annotators flagged by their gold accuracy",
                elem_id="pf-export-flagged",
            )
            export_button = gr.Button("Export", elem_id="pf-export")
            export_result = html(elem_id="pf-export-result")
            download = gr.File(label="Download", interactive=False, elem_id="pf-download")
    upload_button.click(
        upload, [file, text_field], [upload_result], api_name="prompts_upload", **DIRECT
    )
    export_button.click(
        export,
        [fmt, layout, sources, iterations, min_agreement, annotators, split, include_flagged],
        [export_result, download],
        api_name="export",
        **DIRECT,
    )
