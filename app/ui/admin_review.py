"""Admin view, review: the pairs whose human labels disagree, each with both texts and every label
and reason, and the admin's decision that settles one for training and export (audited,
labeling/review.py). Every handler checks for an admin."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape, prompt_html, response_html
from labeling import review as review_actions
from storage import crud, review
from storage.models import Role

PAGE = 20
CHOICES = {"a": "a better", "b": "b better", "tie": "tie", "both_bad": "both bad"}


def _ok(text: str) -> str:
    return f'<span class="pf-ok">{escape(text)}</span>'


def _error(text: str) -> str:
    return f'<span class="pf-error" role="alert">{escape(text)}</span>'


def pair_html(detail: review.PairDetail) -> str:
    """A pair as an admin reviews it: the texts (safe Markdown, a and b as stored), its labels
    with who made them and why (escaped)."""
    gold = f" · gold answer <b>{escape(detail.gold_answer)}</b>" if detail.gold_answer else ""
    labels = "".join(
        f'<tr class="pf-label-{escape(lab.source)}"><td>{escape(lab.annotator or lab.source)}'
        f"</td><td>{escape(lab.source)}</td><td>{escape(lab.choice)}</td>"
        f"<td>{escape(lab.reason or '')}</td></tr>"
        for lab in detail.labels
    )
    return (
        f'<div class="pf-review" data-pair="{detail.pair_id}">'
        f"<p><b>Pair {detail.pair_id}</b> · {escape(detail.route)} · {escape(detail.status)}"
        f"{gold}</p>"
        f"{prompt_html(detail.prompt, detail.messages)}"
        '<div class="pf-sides">'
        f"{response_html('a', detail.a, cut=False, elem_id=f'pf-review-a-{detail.pair_id}')}"
        f"{response_html('b', detail.b, cut=False, elem_id=f'pf-review-b-{detail.pair_id}')}"
        "</div>"
        '<table class="pf-timeline"><tr><th>by</th><th>source</th><th>choice</th>'
        "<th>reason</th></tr>"
        f"{labels or '<tr><td colspan=4>No labels.</td></tr>'}</table></div>"
    )


def disputed_html(ctx: AppContext, include_settled: bool = False) -> str:
    total, pairs = review_actions.disputed(
        engine=ctx.rt.engine, limit=PAGE, include_settled=include_settled
    )
    head = (
        f'<p id="pf-review-count">{total} pairs whose labels disagree'
        + (" (settled ones included)" if include_settled else ", not settled yet")
        + (f"; the oldest {PAGE} below" if total > PAGE else "")
        + ".</p>"
    )
    return head + "".join(pair_html(p) for p in pairs)


def pair_id_of(value: Any) -> int:
    """A pair id from a number box, or ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"Pair id: expected a whole number, got {value!r}")
    if not 1 <= int(value) <= 2**31 - 1:
        raise ValueError(f"Pair id: expected a pair id (1 or more), got {value!r}")
    return int(value)


def build_review(ctx: AppContext):
    """Components and events of the review tab; returns (refresh function, its outputs)."""

    def refresh(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        return disputed_html(ctx)

    def show(include_settled: Any, request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        return disputed_html(ctx, include_settled=include_settled is True)

    def decide(pair_id: Any, choice: Any, note: Any, include_settled: Any, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        try:
            pid = pair_id_of(pair_id)
            if choice not in CHOICES:
                raise ValueError(f"Decision: expected one of {', '.join(CHOICES)}, got {choice!r}")
            if note is not None and not isinstance(note, str):
                raise ValueError("Note: expected text")
            review_actions.settle(
                engine=ctx.rt.engine,
                pair_id=pid,
                choice=choice,
                user_id=admin.id,
                via="admin",
                note=(note or "").strip() or None,
            )
        except (ValueError, crud.NotFound, crud.Conflict) as exc:
            return _error(str(exc)), disputed_html(ctx, include_settled=include_settled is True)
        message = _ok(f"Pair {pid} settled: {CHOICES[choice]}.")
        return message, disputed_html(ctx, include_settled=include_settled is True)

    gr.Markdown(
        "**Disagreements**: pairs labeled by more than one annotator whose labels differ. Your "
        "decision settles a pair for DPO training and the export (it replaces an earlier one); "
        "the labels stay as they were."
    )
    with gr.Row():
        pair_id = gr.Number(label="Pair id", precision=0, minimum=1, elem_id="pf-review-pair")
        choice = gr.Radio(
            list(CHOICES),
            value="a",
            label="Decision (about the pair's a and b)",
            elem_id="pf-review-choice",
        )
        note = gr.Textbox(label="Note (optional)", max_lines=1, elem_id="pf-review-note")
        settle_button = gr.Button("Settle", elem_id="pf-review-settle", variant="primary")
    with gr.Row():
        include_settled = gr.Checkbox(False, label="Show settled pairs too")
        refresh_button = gr.Button("Refresh", size="sm", elem_id="pf-review-refresh")
    result = html(elem_id="pf-review-result")
    pairs = html(elem_id="pf-review-list")

    settle_button.click(
        decide,
        [pair_id, choice, note, include_settled],
        [result, pairs],
        api_name="review_settle",
        **DIRECT,
    )
    refresh_button.click(show, [include_settled], [pairs], api_name="review_list", **DIRECT)
    return refresh, [pairs]
