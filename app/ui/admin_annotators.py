"""Admin view, annotators: the annotator dashboard (per annotator: labels, labels per hour, median
seconds, the share too fast, kappa with peers, agreement with the proxy, gold accuracy and flag,
agreement per criterion; a table and bar charts), gold accuracy with its flag (lift it), and gold
pairs (import a file; look a pair up, mark it gold or remove its gold). Every handler checks for
an admin, and every change is audited (labeling/gold.py)."""

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


# The dashboard's bar charts: (key in the report, title, the largest value drawn, format)
CHARTS = (
    ("labels_per_hour", "labels per hour", None, "{:.0f}"),
    ("median_seconds", "median seconds", None, "{:.1f}"),
    ("too_fast_share", "share too fast", 1.0, "{:.2f}"),
    ("peer_kappa", "kappa with peers", 1.0, "{:.2f}"),
    ("gold_accuracy", "gold accuracy", 1.0, "{:.2f}"),
)


def _fmt(value: Any, pattern: str = "{:.2f}") -> str:
    return "–" if value is None else pattern.format(value)


def dashboard_html(report: dict[str, Any]) -> str:
    """The annotator dashboard as a table, one row per annotator (names escaped)."""
    rows = report["annotators"]
    if not rows:
        return '<p id="pf-dashboard">No human labels yet.</p>'
    criteria = sorted({name for a in rows for name in a["criteria_agreement"]})
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "annotator",
            "labels",
            "per hour",
            "median s",
            f"< {report['too_fast_seconds']:g} s",
            "κ peers",
            "vs proxy",
            "gold",
            *criteria,
        )
    )
    body = ""
    for a in rows:
        gold = _fmt(a["gold_accuracy"]) + f" ({a['gold_seen']})"
        if a["gold_flagged"]:
            gold += " flagged"
        cells = [
            escape(a["name"]),
            str(a["labels"]),
            _fmt(a["labels_per_hour"], "{:.0f}"),
            _fmt(a["median_seconds"], "{:.1f}"),
            _fmt(a["too_fast_share"]),
            _fmt(a["peer_kappa"]),
            _fmt(a["proxy_agreement"]),
            escape(gold),
            *(_fmt(a["criteria_agreement"].get(name)) for name in criteria),
        ]
        body += (
            f'<tr data-annotator="{escape(a["name"])}">'
            + "".join(f"<td>{cell}</td>" for cell in cells)
            + "</tr>"
        )
    return (
        f'<table class="pf-timeline" id="pf-dashboard"><tr>{head}</tr>{body}</table>'
        f"<p>Per hour: labels per hour spent labeling; too fast: the share of labels made in less "
        f"than {report['too_fast_seconds']:g} s; κ peers: the mean Cohen's κ with each annotator "
        "sharing enough pairs; criteria: the share of their judgments matching their peers'.</p>"
    )


def dashboard_svg(report: dict[str, Any], width: int = 760) -> str:
    """The dashboard's figures as horizontal bars, a panel per figure, a bar per annotator.
    Only numbers and escaped names go into the markup."""
    rows = report["annotators"]
    if not rows:
        return ""
    panel_w, label_w, bar_h = width // len(CHARTS), 70, 16
    height = 28 + bar_h * len(rows) + 8
    parts = [
        f'<svg id="pf-dashboard-plot" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="Annotator figures" style="max-width:{width}px;font:11px sans-serif">'
    ]
    for n, (key, title, top, pattern) in enumerate(CHARTS):
        x0 = n * panel_w
        values = [a[key] for a in rows]
        biggest = top or max((v for v in values if v is not None), default=0) or 1
        parts.append(
            f'<text x="{x0 + 4}" y="14" fill="currentColor" font-weight="600">'
            f"{escape(title)}</text>"
        )
        for i, (a, value) in enumerate(zip(rows, values, strict=True)):
            y = 24 + i * bar_h
            parts.append(
                f'<text x="{x0 + 4}" y="{y + 11}" fill="currentColor" fill-opacity=".75">'
                f"{escape(a['name'][:10])}</text>"
            )
            if value is None:
                continue
            span = max(0.0, min(1.0, value / biggest)) * (panel_w - label_w - 46)
            flagged = key == "gold_accuracy" and a["gold_flagged"]
            color = "#d92d20" if flagged else "var(--color-accent, #6366f1)"
            parts.append(
                f'<rect class="pf-dashboard-bar" data-figure="{key}" x="{x0 + label_w}" '
                f'y="{y + 3}" width="{span:.1f}" height="{bar_h - 6}" fill="{color}" rx="2"/>'
                f'<text x="{x0 + label_w + span + 3:.1f}" y="{y + 11}" fill="currentColor">'
                f"{pattern.format(value)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def dashboard(ctx: AppContext) -> tuple[str, str]:
    from labeling.quality import quality_report

    report = quality_report(engine=ctx.rt.engine, labeling=ctx.rt.effective_settings().labeling)
    return dashboard_html(report), dashboard_svg(report)


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
        return (*dashboard(ctx), gold_html(ctx))

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

    gr.Markdown("**Annotators** (every human label so far)")
    table = html(elem_id="pf-dashboard-table")
    plot = html(elem_id="pf-dashboard-plots")
    refresh_button = gr.Button("Refresh", size="sm", elem_id="pf-dashboard-refresh")
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
    refresh_button.click(
        refresh, None, [table, plot, standing], api_name="dashboard_refresh", **DIRECT
    )
    return refresh, [table, plot, standing]
