"""Admin view, annotators: gold accuracy per annotator with its flag (lift it), gold pairs (import a
file; look a pair up, mark it gold or remove its gold). Every handler checks for an admin, and
every change is audited (labeling/gold.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.admin_review import pair_html, pair_id_of
from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape
from labeling import gold as gold_actions
from storage import crud, review
from storage.db import transaction
from storage.models import Role

ANSWERS = {"a": "A better", "b": "B better", "tie": "Tie", "both_bad": "Both bad"}


def _ok(text: str) -> str:
    return f'<span class="pf-ok">{escape(text)}</span>'


def _error(text: str) -> str:
    return f'<span class="pf-error" role="alert">{escape(text)}</span>'


def gold_html(ctx: AppContext) -> str:
    """Each annotator's gold accuracy, count and flag, as a table."""
    labeling = ctx.rt.effective_settings().labeling
    rows = gold_actions.standing(engine=ctx.rt.engine, labeling=labeling)
    rule = (
        f"Flagged under {labeling.min_gold_accuracy:g} gold accuracy after "
        f"{labeling.min_gold_seen} gold pairs; gold pairs come at {labeling.gold_rate:g} of the "
        "claims. A flagged annotator's labels are "
        + (
            "left out of training, the proxy's refit and the export"
            if labeling.gold_filter
            else "kept (gold_filter is off)"
        )
        + " until the flag is lifted."
    )
    if not rows:
        return f'<p>{escape(rule)}</p><p id="pf-gold-standing">No gold labels yet.</p>'
    body = ""
    for s in rows:
        flag = ""
        if s.flagged:
            flag = f"flagged at gold label {s.flagged_at}" + (
                ", labels left out" if labeling.gold_filter else ""
            )
        since = f" (counted since {s.since:%Y-%m-%d %H:%M}: {s.counted})" if s.since else ""
        accuracy = "–" if s.accuracy is None else f"{s.accuracy:.3f}"
        body += (
            f'<tr data-annotator="{escape(s.name)}" class="{"pf-flagged" if s.flagged else ""}">'
            f"<td>{escape(s.name)}</td><td>{s.seen}</td><td>{s.correct}</td>"
            f"<td>{accuracy}</td><td>{escape(flag)}{escape(since)}</td></tr>"
        )
    return (
        f"<p>{escape(rule)}</p>"
        '<table class="pf-timeline" id="pf-gold-standing"><tr><th>annotator</th>'
        "<th>gold labels</th><th>right</th><th>accuracy</th><th>flag</th></tr>"
        f"{body}</table>"
    )


def build_annotators(ctx: AppContext):
    """Components and events of the annotators tab; returns (refresh function, its outputs)."""

    def refresh(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        return gold_html(ctx)

    def lift(name: str, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        name = (name or "").strip() if isinstance(name, str) else ""
        if not name:
            return _error("Annotator: give a user name."), gold_html(ctx)
        try:
            gold_actions.lift(engine=ctx.rt.engine, name=name, user_id=admin.id, via="admin")
        except crud.NotFound as exc:
            return _error(str(exc)), gold_html(ctx)
        return _ok(f"{name}: flag lifted; gold accuracy counts afresh from now."), gold_html(ctx)

    def show_pair(pair_id: Any, request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        try:
            with transaction(ctx.rt.engine, readonly=True) as session:
                detail = review.pair_detail(session=session, pair_id=pair_id_of(pair_id))
        except (ValueError, crud.NotFound) as exc:
            return _error(str(exc))
        return pair_html(detail)

    def mark(pair_id: Any, answer: Any, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        try:
            pid = pair_id_of(pair_id)
            if answer not in ANSWERS:
                raise ValueError(f"Answer: expected one of {', '.join(ANSWERS)}, got {answer!r}")
            gold_actions.mark(
                engine=ctx.rt.engine, pair_id=pid, answer=answer, user_id=admin.id, via="admin"
            )
        except (ValueError, crud.NotFound, crud.Conflict) as exc:
            return _error(str(exc)), gold_html(ctx)
        return _ok(f"Pair {pid} is a gold pair (answer {answer})."), gold_html(ctx)

    def unmark(pair_id: Any, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        try:
            pid = pair_id_of(pair_id)
            gold_actions.unmark(engine=ctx.rt.engine, pair_id=pid, user_id=admin.id, via="admin")
        except (ValueError, crud.NotFound) as exc:
            return _error(str(exc)), gold_html(ctx)
        return _ok(f"Pair {pid} is no longer a gold pair."), gold_html(ctx)

    def upload(file: str | None, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        from labeling.importing import ImportFileError, read_gold

        if not file:
            return _error("Choose a gold file first (.jsonl, .json, .csv or .parquet)."), gold_html(
                ctx
            )
        name = Path(file).name
        try:
            items = read_gold(file)
        except ImportFileError as exc:
            where = name + (f", {exc.unit} {exc.line}" if exc.line else "")
            where += f", field {exc.field!r}" if exc.field else ""
            return _error(f"{where}: {exc.problem}. Nothing was imported."), gold_html(ctx)
        added, skipped = gold_actions.import_gold(
            engine=ctx.rt.engine, items=items, user_id=admin.id, via="admin", file=name
        )
        return _ok(f"{name}: {added} gold pairs added, {skipped} duplicates skipped."), gold_html(
            ctx
        )

    gr.Markdown("**Gold accuracy** per annotator")
    standing = html(elem_id="pf-gold")
    with gr.Row():
        annotator = gr.Textbox(label="Annotator", elem_id="pf-gold-name", scale=2)
        lift_button = gr.Button("Lift flag", elem_id="pf-gold-lift", scale=1)
    lift_result = html(elem_id="pf-gold-lift-result")
    gr.Markdown(
        "**Gold pairs**: pairs with a known answer, shown to every annotator once at "
        "`labeling.gold_rate`, looking like any other pair; never training data."
    )
    with gr.Row():
        with gr.Column():
            gold_file = gr.File(
                label="Gold file (prompt, a, b, answer)",
                file_types=[".jsonl", ".json", ".csv", ".parquet"],
                type="filepath",
            )
            import_button = gr.Button("Import gold pairs", elem_id="pf-gold-import")
            import_result = html(elem_id="pf-gold-import-result")
        with gr.Column():
            pair_id = gr.Number(label="Pair id", precision=0, minimum=1, elem_id="pf-gold-pair")
            show_button = gr.Button("Show pair", elem_id="pf-gold-show")
            answer = gr.Radio(
                list(ANSWERS), value="a", label="Gold answer (about the pair's a and b)"
            )
            with gr.Row():
                mark_button = gr.Button("Mark as gold", elem_id="pf-gold-mark")
                unmark_button = gr.Button("Remove gold", elem_id="pf-gold-unmark")
            mark_result = html(elem_id="pf-gold-mark-result")
    detail = html(elem_id="pf-gold-detail")

    lift_button.click(lift, [annotator], [lift_result, standing], api_name="gold_lift", **DIRECT)
    show_button.click(show_pair, [pair_id], [detail], api_name="gold_show", **DIRECT)
    mark_button.click(
        mark, [pair_id, answer], [mark_result, standing], api_name="gold_mark", **DIRECT
    )
    unmark_button.click(
        unmark, [pair_id], [mark_result, standing], api_name="gold_unmark", **DIRECT
    )
    import_button.click(
        upload, [gold_file], [import_result, standing], api_name="gold_import", **DIRECT
    )
    return refresh, [standing]
