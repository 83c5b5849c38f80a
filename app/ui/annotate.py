"""The labeling view: a prompt, two responses side by side, and the annotator's choice.

The A/B order is drawn by the queue on each claim and stored with the assignment; the buttons
send what the person saw ("left", "right", ...) and the queue translates it back to the pair's a/b.
The proxy's suggestion follows the admin's `labeling.suggestion_mode`: shown with the pair,
revealed after the vote (kept on the server until then), or off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import gradio as gr
from sqlmodel import Session

from app.ui.common import header_html, html, message_html
from app.ui.guard import AppContext, CurrentUser, require_user
from app.ui.render import escape, markdown_to_safe_html
from storage import crud, queue
from storage.db import transaction
from storage.models import utcnow
from storage.settings import Settings

CHOICES = {"left": "A better", "right": "B better", "tie": "Tie", "both_bad": "Both bad"}
BUTTON_IDS = {"left": "pf-left", "right": "pf-right", "tie": "pf-tie", "both_bad": "pf-both-bad"}
KEYS = {"left": "1", "right": "2", "tie": "3", "both_bad": "4"}


@dataclass(frozen=True)
class Shown:
    """What this browser session was shown last; kept server-side in gr.State."""

    pair_id: int
    claimed_at: object  # aware datetime
    suggestion: queue.ShownSuggestion | None


@dataclass(frozen=True)
class Screen:
    """Everything the view shows after one call, in the order of `_outputs`."""

    user: CurrentUser
    stats: dict
    shown: Shown | None
    claim: queue.Claim | None
    message: str
    suggestion_mode: str
    feedback: str


def suggestion_text(s: queue.ShownSuggestion) -> str:
    side = "A" if s.p_left >= 0.5 else "B"
    p = max(s.p_left, 1 - s.p_left)
    return f"{side} better, P = {p:.2f} ± {s.uncertainty:.2f} ({s.agent})"


def _next_screen(
    session: Session, settings: Settings, user: CurrentUser, feedback: str = ""
) -> Screen:
    """Claim (or re-show) the user's pair, unless labeling is paused."""
    labeling = settings.labeling
    claim = None
    if not labeling.paused:
        claim = queue.claim_next_pair(
            session=session, user_id=user.id, lease_seconds=labeling.lease_seconds
        )
    if labeling.paused:
        message = "Labeling is paused by an admin. Check again in a while."
    elif claim is None:
        message = "The queue is empty: every pair has its labels. Check again later."
    else:
        message = ""
    shown = Shown(claim.pair_id, claim.claimed_at, claim.suggestion) if claim else None
    return Screen(user, {}, shown, claim, message, labeling.suggestion_mode, feedback)


def _with_stats(ctx: AppContext, screen: Screen) -> Screen:
    """Counting the queue scans it: done in a read transaction, outside the writers' lock."""
    with transaction(ctx.rt.engine, readonly=True) as session:
        stats = queue.queue_stats(session=session, user_id=screen.user.id)
    return replace(screen, stats=stats)


def _box(css_class: str, untrusted: str, elem_id: str = "") -> str:
    id_attr = f' id="{elem_id}"' if elem_id else ""
    return f'<div class="{css_class}"{id_attr}>{markdown_to_safe_html(untrusted)}</div>'


def _render(screen: Screen) -> tuple:
    claim = screen.claim
    stats = (
        f'<div class="pf-stats">Labeled today: <b id="pf-today">{screen.stats["labeled_today"]}'
        f'</b> · Left in the queue: <b id="pf-left-count">{screen.stats["queue_left"]}</b></div>'
    )
    suggestion = ""
    if claim and claim.suggestion and screen.suggestion_mode == "shown":
        suggestion = f"Proxy suggests: {escape(suggestion_text(claim.suggestion))}"
    return (
        header_html(screen.user, page="label"),
        stats,
        message_html(screen.message) if screen.message else "",
        gr.update(visible=bool(screen.message)),
        gr.update(visible=claim is not None),
        _box("pf-prompt", claim.prompt if claim else ""),
        _box("pf-response", claim.left if claim else "", "pf-text-left"),
        _box("pf-response", claim.right if claim else "", "pf-text-right"),
        f'<div class="pf-suggestion" id="pf-suggestion">{suggestion}</div>',
        f'<div class="pf-feedback" id="pf-feedback">{screen.feedback}</div>',
        "",
        screen.shown,
    )


def _feedback(shown: Shown, choice: str, mode: str) -> str:
    text = f"Saved: {CHOICES[choice]}."
    if mode == "after_vote" and shown.suggestion is not None:
        text += f" The proxy suggested {suggestion_text(shown.suggestion)}."
    return f'<span class="pf-ok">{escape(text)}</span>'


def _bind_choice(choose, choice: str):
    """One handler per button (typed, so Gradio passes the request)."""

    def handler(shown: Shown | None, reason: str, request: gr.Request):
        return choose(choice, shown, reason, request)

    return handler


def build_annotate(ctx: AppContext) -> gr.Blocks:
    def screen(user: CurrentUser, feedback: str = "") -> Screen:
        with transaction(ctx.rt.engine) as session:
            next_screen = _next_screen(session, ctx.effective_settings(session), user, feedback)
        return _with_stats(ctx, next_screen)

    def show(request: gr.Request):
        user = require_user(ctx, request)
        return _render(screen(user))

    def choose(choice: str, shown: Shown | None, reason: str, request: gr.Request):
        user = require_user(ctx, request)
        if shown is None:
            raise gr.Error("No pair is shown: reload the page.")
        reason = (reason or "").strip() or None
        seconds = max(0.0, (utcnow() - shown.claimed_at).total_seconds())
        try:
            # The label and the next pair in one transaction: one commit per click.
            with transaction(ctx.rt.engine) as session:
                queue.submit_label(
                    session=session,
                    user_id=user.id,
                    pair_id=shown.pair_id,
                    shown_choice=choice,
                    seconds=seconds,
                    reason=reason,
                )
                settings = ctx.effective_settings(session)
                feedback = _feedback(shown, choice, settings.labeling.suggestion_mode)
                next_screen = _next_screen(session, settings, user, feedback)
        except (crud.Conflict, crud.NotFound, ValueError) as exc:
            return _render(screen(user, f'<span class="pf-error">Not saved: {escape(exc)}</span>'))
        return _render(_with_stats(ctx, next_screen))

    def skip(shown: Shown | None, request: gr.Request):
        user = require_user(ctx, request)
        feedback = ""
        if shown is not None:
            try:
                with transaction(ctx.rt.engine) as session:
                    queue.skip_pair(session=session, user_id=user.id, pair_id=shown.pair_id)
                feedback = "Skipped."
            except (crud.Conflict, crud.NotFound) as exc:
                feedback = f'<span class="pf-error">{escape(exc)}</span>'
        return _render(screen(user, feedback))

    with gr.Blocks(title="prefloop · label") as blocks:
        state = gr.State(None)
        header = html(header_html(None, page="label"))
        stats = html()
        with gr.Column(visible=False) as message_box:
            message = html(elem_id="pf-message")
            refresh = gr.Button("Check again", elem_id="pf-refresh", size="sm")
        with gr.Column(visible=False) as pair_box:
            prompt = html()
            with gr.Row(equal_height=False):
                with gr.Column():
                    html('<div class="pf-side">A</div>')
                    left = html()
                with gr.Column():
                    html('<div class="pf-side">B</div>')
                    right = html()
            suggestion = html()
            with gr.Row():
                buttons = {
                    choice: gr.Button(
                        f"{label}  [{KEYS[choice]}]",
                        elem_id=BUTTON_IDS[choice],
                        variant="primary" if choice in ("left", "right") else "secondary",
                    )
                    for choice, label in CHOICES.items()
                }
                skip_button = gr.Button("Skip  [s]", elem_id="pf-skip", variant="secondary")
            reason = gr.Textbox(
                label="Reason (optional)",
                max_length=queue.MAX_REASON_CHARS,
                lines=1,
                elem_id="pf-reason",
            )
        feedback = html()

        outputs = [header, stats, message, message_box, pair_box, prompt, left, right, suggestion]
        outputs += [feedback, reason, state]
        blocks.load(show, None, outputs, api_name="show")
        refresh.click(show, None, outputs, api_name="refresh")
        for choice, button in buttons.items():
            button.click(
                _bind_choice(choose, choice),
                [state, reason],
                outputs,
                api_name=f"label_{choice}",
                concurrency_limit=None,
            )
        skip_button.click(skip, [state], outputs, api_name="skip", concurrency_limit=None)
    blocks.queue(default_concurrency_limit=None)
    return blocks
