"""Admin view, data: prompt upload (JSONL/CSV, all or nothing, line-numbered errors) and the
preference export download."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import gradio as gr

from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape
from storage import crud
from storage.db import transaction
from storage.models import Role

EXPORT_KEEP_SECONDS = 600


def _ok(text: str) -> str:
    return f'<span class="pf-ok">{escape(text)}</span>'


def _error(text: str) -> str:
    return f'<pre class="pf-error" role="alert">{escape(text)}</pre>'


def upload_prompts(ctx: AppContext, admin_id: int, path: str, name: str, text_field: str) -> str:
    from labeling.importing import ImportFileError, read_prompts

    try:
        records = read_prompts(path, text_field=text_field or "prompt")
    except ImportFileError as exc:
        # Name the file as the admin knows it, not Gradio's temporary copy.
        where = name + (f", line {exc.line}" if exc.line else "")
        where += f", field {exc.field!r}" if exc.field else ""
        return _error(f"{where}: {exc.problem}. Nothing was imported.")
    with transaction(ctx.rt.engine) as session:
        added, skipped = crud.add_prompts(session=session, prompts=records)
        crud.record_audit(
            session=session,
            user_id=admin_id,
            action="prompts.import",
            detail={"file": name, "added": added, "skipped": skipped},
        )
    return _ok(f"{name}: {added} prompts added, {skipped} duplicates skipped.")


def build_data(ctx: AppContext):
    """Components and events of the data tab; returns (refresh function, its outputs)."""

    def upload(file: str | None, text_field: str, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        if not file:
            return _error("Choose a .jsonl or .csv file first.")
        return upload_prompts(ctx, admin.id, file, Path(file).name, text_field)

    def export(fmt: str, layout: str, sources: list[str], request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        from labeling.export import ExportError, ExportFilters, export_file

        if not sources:
            return _error("Pick at least one label source."), None
        try:
            result = export_file(
                engine=ctx.rt.engine,
                format=fmt,
                layout=layout,
                filters=ExportFilters(sources=tuple(sources)),
            )
        except (ExportError, ValueError) as exc:
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
            file = gr.File(label="Prompt file", file_types=[".jsonl", ".csv"], type="filepath")
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
            sources = gr.CheckboxGroup(
                ["human", "proxy", "seed"], value=["human", "proxy", "seed"], label="Sources"
            )
            export_button = gr.Button("Export", elem_id="pf-export")
            export_result = html(elem_id="pf-export-result")
            download = gr.File(label="Download", interactive=False, elem_id="pf-download")
    upload_button.click(
        upload, [file, text_field], [upload_result], api_name="prompts_upload", **DIRECT
    )
    export_button.click(
        export, [fmt, layout, sources], [export_result, download], api_name="export", **DIRECT
    )
