"""Admin view, evaluation: the leaderboard of policy versions from the human evaluation votes (a
table and a plot of the ratings with their 95% intervals), the human gate's state, queueing
evaluation pairs of two versions, and the votes' export."""

from __future__ import annotations

import shutil
import threading

import gradio as gr

from app.ui.admin_loop import parse_version, policy_choices
from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape
from storage import crud, evaluation
from storage.db import transaction
from storage.models import Role
from training.ratings import ANCHOR_RATING, Leaderboard

EXPORT_KEEP_SECONDS = 600


def leaderboard_html(board: Leaderboard, counts: dict[str, int], gate: dict | None) -> str:
    """The leaderboard as a table, best first, with the queue's counts and the deployed
    version's human gate."""
    status = board.meta.get("status", {})
    head = (
        f'<p id="pf-eval-status">Evaluation pairs queued: <b>{counts["queued"]}</b> · votes: '
        f"<b>{counts['votes']}</b>"
    )
    if gate:
        head += (
            f" · Human gate of the deployed version: <b>{escape(gate.get('status', ''))}</b>"
            f" (against v{escape(gate.get('opponent', ''))}"
            + (f", {gate['votes']} votes" if "votes" in gate else "")
            + ")"
        )
    head += "</p>"
    if not board.ratings:
        return head + '<p id="pf-leaderboard">No evaluation votes yet.</p>'
    rows = ""
    for rank, r in enumerate(board.ratings, 1):
        if r.version == board.anchor:
            versus = "–"
        elif r.win_rate_vs_anchor is None:
            versus = "never met (0)"
        else:
            versus = f"{r.win_rate_vs_anchor:.3f} ({r.votes_vs_anchor})"
        rows += (
            f'<tr data-version="{r.version}"><td>{rank}</td><td>v{r.version}</td>'
            f"<td>{escape(status.get(r.version) or '')}</td><td>{r.rating:.1f}</td>"
            f"<td>{r.lower:.0f} – {r.upper:.0f}</td><td>{r.votes}</td>"
            f"<td>{versus}</td></tr>"
        )
    return (
        head
        + '<table class="pf-timeline" id="pf-leaderboard"><tr><th>rank</th><th>version</th>'
        + "<th>status</th><th>rating</th><th>95% interval</th><th>votes</th>"
        + f"<th>win-rate vs v{board.anchor} (votes)</th></tr>{rows}</table>"
        + f"<p>Bradley–Terry on {board.votes} votes, v{board.anchor} (π<sub>0</sub>) fixed at "
        + f"{ANCHOR_RATING:.0f}; intervals from {board.resamples} bootstrap resamples.</p>"
    )


def leaderboard_svg(board: Leaderboard, width: int = 640) -> str:
    """The ratings as dots on their 95% intervals, one row per version, best on top, with the
    anchor's rating as a dashed line. Only numbers and version numbers go into the markup."""
    if not board.ratings:
        return ""
    row, left, right, top = 26, 56, 20, 24
    height = top + row * len(board.ratings) + 30
    low = min(r.lower for r in board.ratings)
    high = max(r.upper for r in board.ratings)
    pad = max(20.0, (high - low) * 0.08)
    low, high = low - pad, high + pad

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * (width - left - right)

    parts = [
        f'<svg id="pf-leaderboard-plot" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="Ratings with 95% intervals" '
        f'style="max-width:{width}px;font:12px sans-serif">',
        f'<line x1="{x(ANCHOR_RATING):.1f}" y1="{top - 10}" x2="{x(ANCHOR_RATING):.1f}" '
        f'y2="{height - 24}" stroke="currentColor" stroke-opacity=".35" stroke-dasharray="4 3"/>',
    ]
    for n, r in enumerate(board.ratings):
        y = top + row * n + row / 2
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" fill="currentColor">'
            f"v{r.version}</text>"
            f'<line class="pf-interval" x1="{x(r.lower):.1f}" y1="{y:.1f}" x2="{x(r.upper):.1f}" '
            f'y2="{y:.1f}" stroke="var(--color-accent, #f97316)" stroke-width="3" '
            f'stroke-linecap="round"/>'
            f'<circle cx="{x(r.rating):.1f}" cy="{y:.1f}" r="5" fill="currentColor"/>'
        )
    for tick in _ticks(low, high):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{height - 8}" text-anchor="middle" '
            f'fill="currentColor" fill-opacity=".7">{tick:.0f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _ticks(low: float, high: float) -> list[float]:
    span = high - low
    step = next(s for s in (10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000) if span / s <= 6)
    first = -(-low // step) * step
    return [first + i * step for i in range(int((high - first) // step) + 1)]


def eval_view(ctx: AppContext) -> tuple[str, str]:
    from training.human_eval import HUMAN_GATE, human_leaderboard

    with transaction(ctx.rt.engine, readonly=True) as session:
        counts = evaluation.eval_queue_counts(session=session)
        deployed = crud.deployed_policy(session=session)
    gate = (deployed.metrics.get(HUMAN_GATE) or None) if deployed else None
    board = human_leaderboard(engine=ctx.rt.engine, settings=ctx.rt.effective_settings())
    return leaderboard_html(board, counts, gate), leaderboard_svg(board)


def _ok(text: str) -> str:
    return f'<span class="pf-ok">{escape(text)}</span>'


def _error(text: str) -> str:
    return f'<span class="pf-error" role="alert">{escape(text)}</span>'


def build_eval(ctx: AppContext):
    """Components and events of the evaluation tab; returns (refresh function, its outputs)."""

    def refresh(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        table, plot = eval_view(ctx)
        choices = policy_choices(ctx)
        return table, plot, gr.update(choices=choices), gr.update(choices=choices)

    def queue_pairs(a: str | None, b: str | None, prompts: float | None, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        from app.scheduler import request_eval_pairs

        try:
            a_version, b_version = parse_version(a), parse_version(b)
            n = None if prompts in (None, "") else int(prompts)
            if n is not None and (n != prompts or n < 1):
                raise ValueError("Prompts: a whole number, at least 1")
            job_id = request_eval_pairs(
                ctx.rt, admin.id, a_version=a_version, b_version=b_version, n_prompts=n
            )
        except (ValueError, crud.NotFound) as exc:
            return _error(str(exc))
        return _ok(
            f"Evaluation pairs of v{a_version} against v{b_version} requested (job {job_id})."
        )

    def export(fmt: str, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        from labeling.vote_export import export_votes_file

        try:
            result = export_votes_file(engine=ctx.rt.engine, format=fmt)
        except ValueError as exc:  # ExportError: no votes yet, or a bad format
            return _error(str(exc)), None
        cleanup = threading.Timer(EXPORT_KEEP_SECONDS, shutil.rmtree, [result.path.parent, True])
        cleanup.daemon = True
        cleanup.start()
        with transaction(ctx.rt.engine) as session:
            crud.record_audit(
                session=session,
                user_id=admin.id,
                action="eval.export",
                detail={"via": "admin", "format": fmt, "rows": result.rows},
            )
        return _ok(f"{result.rows} evaluation votes exported."), str(result.path)

    table = html(elem_id="pf-eval")
    plot = html(elem_id="pf-eval-plot")
    refresh_button = gr.Button("Refresh leaderboard", size="sm", elem_id="pf-eval-refresh")
    gr.Markdown(
        "**Queue evaluation pairs**: blind pairs of two versions' replies to held-out prompts, "
        "mixed into annotators' queues at `eval.human_share` (1: labeled first, an evaluation "
        "round)."
    )
    with gr.Row():
        version_a = gr.Dropdown([], label="Version A", elem_id="pf-eval-a")
        version_b = gr.Dropdown([], label="Version B", elem_id="pf-eval-b")
        prompts = gr.Number(
            ctx.rt.settings.eval.human_prompts or 64,
            label="Held-out prompts",
            precision=0,
            minimum=1,
            elem_id="pf-eval-prompts",
        )
        queue_button = gr.Button("Queue evaluation pairs", elem_id="pf-eval-queue")
    queue_result = html(elem_id="pf-eval-result")
    with gr.Row():
        fmt = gr.Radio(["jsonl", "parquet"], value="jsonl", label="Votes as")
        export_button = gr.Button("Export votes", elem_id="pf-eval-export")
    export_result = html(elem_id="pf-eval-export-result")
    download = gr.File(label="Download", interactive=False, elem_id="pf-eval-download")

    outputs = [table, plot, version_a, version_b]
    refresh_button.click(refresh, None, outputs, api_name="eval_refresh", **DIRECT)
    queue_button.click(
        queue_pairs,
        [version_a, version_b, prompts],
        [queue_result],
        api_name="eval_queue",
        **DIRECT,
    )
    export_button.click(export, [fmt], [export_result, download], api_name="eval_export", **DIRECT)
    return refresh, outputs
