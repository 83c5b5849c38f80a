"""The labeling view: a prompt, two responses side by side, and the annotator's choice.

The A/B order is drawn by the queue on each claim and stored with the assignment; the buttons
send what the person saw ("left", "right", ...) and the queue translates it back to the pair's a/b.
The proxy's suggestion follows the admin's `labeling.suggestion_mode`: shown with the pair,
revealed after the vote (read from the database then, never sent before), or off.

The guidelines in force (storage/guidelines.py) sit above the pair in a collapsible panel.

The page holds no server-side state: it sends back the id of the pair it shows, and the queue
accepts a label only for a pair the signed-in user holds. So any server process can take any
click (`prefloop serve --workers N`), and a stale tab cannot label a pair it never showed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import gradio as gr
from sqlmodel import Session

from app.ui.common import DIRECT, header_html, html
from app.ui.guard import AppContext, CurrentUser, require_user
from app.ui.render import escape, markdown_to_safe_html, prompt_html, response_html
from labeling.quality import annotator_figures
from storage import crud, guidelines, queue
from storage.db import transaction
from storage.settings import LabelingSettings

CHOICES = {"left": "A better", "right": "B better", "tie": "Tie", "both_bad": "Both bad"}
# A judgment per criterion (`labeling.criteria`): its choices, and the keys of the first rows
# (a letter row each, under the left hand, apart from 1-4 and s).
CRITERION_CHOICES = {"left": "A", "right": "B", "tie": "Tie"}
CRITERION_KEYS = ("qwe", "zxc", "uio", "jkl")
# A choice button's inputs as the page sends them: the shown pair with the judgments ticked on it
# ({pair, criteria}, see `_shown`), or its id alone when none are (shortcuts.js).
READ_CRITERIA = "(pair, reason) => [window.pfJudged ? window.pfJudged(pair) : pair, reason]"
BUTTON_IDS = {"left": "pf-left", "right": "pf-right", "tie": "pf-tie", "both_bad": "pf-both-bad"}
KEYS = {"left": "1", "right": "2", "tie": "3", "both_bad": "4"}


@dataclass(frozen=True)
class Screen:
    """Everything the view shows after one call, in the order of `_render`'s outputs."""

    user: CurrentUser
    stats: dict
    claim: queue.Claim | None
    message: str
    suggestion_mode: str
    feedback: str
    guidelines: tuple[int, str] | None = None  # (version, Markdown) in force
    criteria: tuple[str, ...] = ()  # `labeling.criteria`, judged beside the overall choice


def suggestion_text(s: queue.ShownSuggestion) -> str:
    side = "A" if s.p_left >= 0.5 else "B"
    p = max(s.p_left, 1 - s.p_left)
    return f"{side} better, P = {p:.2f} ± {s.uncertainty:.2f} ({s.agent})"


def _screen(
    ctx: AppContext,
    session: Session,
    labeling: LabelingSettings,
    user: CurrentUser,
    claim: queue.Claim | None,
    feedback: str = "",
) -> Screen:
    """The screen around the user's claim (None: paused, or nothing left) and what is left, in
    the caller's transaction (one per click: the queue's size is an index count, memoized for
    a large queue, so the writers' lock is held for the few rows of this user's assignments)."""
    if labeling.paused:
        message = "Labeling is paused by an admin. Check again in a while."
    elif claim is None:
        message = "The queue is empty: every pair has its labels. Check again later."
    else:
        message = ""
    stats = ctx.queue_stats(session, user.id, None if labeling.paused else claim is not None)
    return Screen(
        user,
        stats,
        claim,
        message,
        labeling.suggestion_mode,
        feedback,
        guidelines.current(session=session),
        tuple(labeling.criteria),
    )


def _pair_html(claim: queue.Claim, suggestion: str, criteria: tuple[str, ...] = ()) -> str:
    return (
        '<div class="pf-pair">'
        f"{prompt_html(claim.prompt, claim.prompt_messages)}"
        '<div class="pf-sides">'
        f"{response_html('A', claim.left, cut=claim.left_cut, elem_id='pf-text-left', action=REWRITE_OPEN['left'])}"
        f"{response_html('B', claim.right, cut=claim.right_cut, elem_id='pf-text-right', action=REWRITE_OPEN['right'])}"
        "</div>"
        f"{rewrite_html(claim.left, claim.right)}"
        f"{criteria_html(criteria)}"
        f'<div class="pf-suggestion" id="pf-suggestion">{suggestion}</div></div>'
    )


# "Rewrite A" / "Rewrite B", at the end of each column's header (no height of their own)
REWRITE_OPEN = {
    side: f'<button type="button" class="pf-rewrite-open" data-side="{side}">Rewrite {letter}</button>'
    for side, letter in (("left", "A"), ("right", "B"))
}


def rewrite_html(left: str, right: str) -> str:
    """The editor the "Rewrite" buttons open on that response's text (its source, kept in hidden
    text areas: escaped, never rendered); the choice button then sends the edit."""
    return (
        '<div class="pf-rewrite" id="pf-rewrite">'
        f'<textarea hidden id="pf-raw-left">{escape(left)}</textarea>'
        f'<textarea hidden id="pf-raw-right">{escape(right)}</textarea>'
        '<div class="pf-rewrite-editor" id="pf-rewrite-editor" hidden>'
        '<label for="pf-rewrite-text">Your better version of <b id="pf-rewrite-side"></b>: '
        "stored as a new reply preferred over the original, sent with your choice</label>"
        '<textarea id="pf-rewrite-text" rows="8"></textarea>'
        '<button type="button" id="pf-rewrite-cancel">Cancel the rewrite</button></div></div>'
    )


@lru_cache(maxsize=8)
def criteria_html(criteria: tuple[str, ...]) -> str:
    """A row per criterion: A, B or tie, as radio buttons the page reads when a choice button
    is clicked (shortcuts.js); each of the first rows has its letter keys."""
    if not criteria:
        return ""
    rows = []
    for n, name in enumerate(criteria):
        keys = CRITERION_KEYS[n] if n < len(CRITERION_KEYS) else ""
        choices = "".join(
            '<label class="pf-criterion-choice">'
            f'<input type="radio" name="pf-c-{escape(name)}" value="{value}"'
            + (f' data-key="{keys[i]}"' if keys else "")
            + f"> {label}"
            + (f' <span class="pf-kbd">{keys[i]}</span>' if keys else "")
            + "</label>"
            for i, (value, label) in enumerate(CRITERION_CHOICES.items())
        )
        rows.append(
            f'<div class="pf-criterion" data-criterion="{escape(name)}">'
            f'<span class="pf-criterion-name">{escape(name.replace("_", " "))}</span>{choices}</div>'
        )
    return f'<div class="pf-criteria" id="pf-criteria">{"".join(rows)}</div>'


def _shown(value: Any) -> tuple[Any, dict[str, str] | None, tuple[str, str] | None]:
    """(pair id, judgments per criterion, rewrite) from what the page sent for the shown pair:
    its id, or {"pair": id, "criteria": {criterion: choice}, "rewrite": {"side", "text"}} when
    judgments were ticked or a response rewritten. Untrusted: the id is checked by `_pair_id`,
    the rest by the queue."""
    if not isinstance(value, dict):
        return value, None, None
    criteria = value.get("criteria")
    if criteria is not None and (
        not isinstance(criteria, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in criteria.items())
    ):
        raise gr.Error(
            "criteria: expected {criterion: choice}; reload the page.", print_exception=False
        )
    rewrite = value.get("rewrite")
    if rewrite is not None:
        if not isinstance(rewrite, dict) or not isinstance(rewrite.get("text"), str):
            raise gr.Error(
                "rewrite: expected {side, text}; reload the page.", print_exception=False
            )
        rewrite = (rewrite.get("side"), rewrite["text"])
    return value.get("pair"), criteria or None, rewrite


def _render(screen: Screen) -> tuple:
    """The outputs of a click (`outputs` in build_annotate): the page's body as one HTML string,
    the cleared reason and the shown pair's id; the page load adds the header.

    One output rather than one per box: Gradio postprocesses each output on its own (a thread hop
    apiece, and a new component for each visibility update), which was most of a click's cost.
    The stylesheet shows the buttons only beside a pair and "Check again" only beside a message.
    """
    claim = screen.claim
    stats = (
        f'<div class="pf-stats">Labeled today: <b id="pf-today">{screen.stats["labeled_today"]}'
        f'</b> · Left in the queue: <b id="pf-left-count">{screen.stats["queue_left"]}</b></div>'
    )
    if claim is None:
        main = f'<div class="pf-message" id="pf-message">{escape(screen.message)}</div>'
    else:
        suggestion = ""
        if claim.suggestion and screen.suggestion_mode == "shown":
            suggestion = f"Proxy suggests: {escape(suggestion_text(claim.suggestion))}"
        main = _pair_html(claim, suggestion, screen.criteria)
    feedback = f'<div class="pf-feedback" id="pf-feedback">{screen.feedback}</div>'
    panel = guidelines_html(*screen.guidelines) if screen.guidelines else ""
    return stats + panel + main + feedback, "", claim.pair_id if claim else None


def own_figures_html(figures: dict[str, Any]) -> str:
    """The annotator's own figures, shown under the header when the page loads (not on each
    click: they read every label of theirs)."""
    if not figures["labels"] and not figures["gold_seen"]:
        return ""
    parts = [f"{figures['labels']} labels"]
    if figures["labels_per_hour"] is not None:
        parts.append(f"{figures['labels_per_hour']:.0f} per hour")
        parts.append(f"median {figures['median_seconds']:.1f} s")
    if figures["peer_agreement"] is not None:
        parts.append(f"agreement with others {figures['peer_agreement']:.2f} ({figures['peer_n']})")
    if figures["gold_accuracy"] is not None:
        parts.append(f"gold accuracy {figures['gold_accuracy']:.2f} ({figures['gold_seen']})")
    return f'<div class="pf-own" id="pf-own">Your numbers: {escape(" · ".join(parts))}</div>'


@lru_cache(maxsize=8)
def guidelines_html(version: int, text: str) -> str:
    """The guidelines as a collapsible panel, rendered as safely as model output. Closed as
    sent; the page's script opens it the first time a version shows in a browser and keeps it as
    the annotator leaves it across clicks (shortcuts.js)."""
    return (
        f'<details class="pf-guidelines" id="pf-guidelines" data-version="{version}">'
        '<summary>Guidelines <span class="pf-guidelines-version">'
        f"(version {version})</span>"
        f'</summary><div class="pf-guidelines-text">{markdown_to_safe_html(text)}</div></details>'
    )


def _feedback(choice: str, suggestion: queue.ShownSuggestion | None, rewrote: bool = False) -> str:
    text = f"Saved: {CHOICES[choice]}." + (" Your rewrite is stored too." if rewrote else "")
    if suggestion is not None:
        text += f" The proxy suggested {suggestion_text(suggestion)}."
    return f'<span class="pf-ok">{escape(text)}</span>'


def _pair_id(value: Any) -> int:
    """The pair id the page sent back (untrusted: the queue checks the user holds it)."""
    try:
        if int(value) >= 1:
            return int(value)
    except (TypeError, ValueError):
        pass
    raise gr.Error("No pair is shown: reload the page.", print_exception=False)


def _reason(value: Any) -> str | None:
    """The optional reason as the page sent it (raw: the events skip Gradio's preprocessing)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise gr.Error("reason: expected text", print_exception=False)
    return value.strip() or None


def _bind_choice(choose, choice: str):
    """One handler per button (typed, so Gradio passes the request)."""

    def handler(shown: Any, reason: Any, request: gr.Request):
        return choose(choice, shown, reason, request)

    return handler


def build_annotate(ctx: AppContext) -> gr.Blocks:
    def screen(user: CurrentUser, feedback: str = "") -> Screen:
        with transaction(ctx.rt.engine) as session:
            settings = ctx.rt.effective_settings(session)
            labeling = settings.labeling
            claim = queue.claim_for_labeling(
                session=session,
                user_id=user.id,
                labeling=labeling,
                eval_share=settings.eval.human_share,
            )
            return _screen(ctx, session, labeling, user, claim, feedback)

    def show(request: gr.Request):
        user = require_user(ctx, request)
        own = own_figures_html(
            annotator_figures(
                engine=ctx.rt.engine,
                user_id=user.id,
                labeling=ctx.rt.effective_settings().labeling,
            )
        )
        return (header_html(user, page="label") + own, *_render(screen(user)))

    def choose(choice: str, shown: Any, reason: Any, request: gr.Request):
        user = None
        try:
            # Who is asking, the label and the next pair in one transaction: one commit a click.
            with transaction(ctx.rt.engine) as session:
                user = require_user(ctx, request, session=session)
                shown_id, criteria, rewrite = _shown(shown)
                pair_id = _pair_id(shown_id)
                settings = ctx.rt.effective_settings(session)
                labeling = settings.labeling
                label, claim = queue.label_and_claim_next(
                    session=session,
                    user_id=user.id,
                    pair_id=pair_id,
                    shown_choice=choice,
                    labeling=labeling,
                    eval_share=settings.eval.human_share,
                    reason=_reason(reason),
                    criteria=criteria,
                    rewrite=rewrite,
                    timed_from_claim=True,
                )
                revealed = None
                if labeling.suggestion_mode == "after_vote":
                    revealed = queue.shown_suggestion(
                        session=session, pair_id=pair_id, swapped=label.swapped
                    )
                feedback = _feedback(choice, revealed, rewrite is not None)
                next_screen = _screen(ctx, session, labeling, user, claim, feedback)
        except gr.Error:
            raise
        except (crud.Conflict, crud.NotFound, ValueError) as exc:
            if user is None:
                raise
            return _render(screen(user, f'<span class="pf-error">Not saved: {escape(exc)}</span>'))
        return _render(next_screen)

    def skip(pair_id: Any, request: gr.Request):
        user = require_user(ctx, request)
        feedback = ""
        if pair_id is not None:
            try:
                with transaction(ctx.rt.engine) as session:
                    queue.skip_pair(session=session, user_id=user.id, pair_id=_pair_id(pair_id))
                feedback = "Skipped."
            except (crud.Conflict, crud.NotFound) as exc:
                feedback = f'<span class="pf-error">{escape(exc)}</span>'
        return _render(screen(user, feedback))

    with gr.Blocks(title="prefloop · label") as blocks:
        # The shown pair's id, held by the page and sent back with each click.
        shown_pair = gr.Number(None, visible=False, precision=0, elem_id="pf-pair-id")
        header = html(header_html(None, page="label"))
        body = html(elem_id="pf-body")
        with gr.Row(elem_id="pf-refresh-row"):
            refresh = gr.Button(
                "Check again", elem_id="pf-refresh", size="sm", scale=0, min_width=160
            )
        with gr.Column(elem_id="pf-controls"):
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

        outputs = [body, reason, shown_pair]
        # One POST per click (see DIRECT). The handlers take the raw values (they check the pair
        # id themselves) and return final HTML and plain values: nothing to pre- or postprocess.
        direct = {**DIRECT, "show_progress": "hidden", "preprocess": False, "postprocess": False}
        blocks.load(show, None, [header, *outputs], api_name="show", **direct)
        refresh.click(show, None, [header, *outputs], api_name="refresh", **direct)
        for choice, button in buttons.items():
            button.click(
                _bind_choice(choose, choice),
                [shown_pair, reason],
                outputs,
                api_name=f"label_{choice}",
                js=READ_CRITERIA,
                **direct,
            )
        skip_button.click(skip, [shown_pair], outputs, api_name="skip", **direct)
    blocks.queue(default_concurrency_limit=None)
    return blocks
