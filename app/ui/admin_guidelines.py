"""Admin view, guidelines: write the labeling guidelines in Markdown and publish them as a new
version (audited; the labeling page opens them again for everyone), with the versions so far and
a preview rendered as the labeling page renders it."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.ui.annotate import guidelines_html
from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape
from labeling import guidelines as guideline_actions
from storage import guidelines
from storage.db import transaction
from storage.models import Role


def _ok(text: str) -> str:
    return f'<span class="pf-ok">{escape(text)}</span>'


def _error(text: str) -> str:
    return f'<span class="pf-error" role="alert">{escape(text)}</span>'


def versions_html(ctx: AppContext) -> tuple[str, str]:
    """(the versions as a table, a preview of the one in force)."""
    with transaction(ctx.rt.engine, readonly=True) as session:
        rows = guidelines.history(session=session)
        now = guidelines.current(session=session)
    if not rows:
        return '<p id="pf-guideline-versions">No guidelines yet.</p>', ""
    body = "".join(
        f"<tr><td>v{version}</td><td>{escape(name or 'command line')}</td>"
        f"<td>{when:%Y-%m-%d %H:%M}</td></tr>"
        for version, name, when in rows
    )
    table = (
        '<table class="pf-timeline" id="pf-guideline-versions"><tr><th>version</th><th>by</th>'
        f"<th>published</th></tr>{body}</table>"
    )
    return table, guidelines_html(*now).replace("<details ", "<details open ", 1)


def build_guidelines(ctx: AppContext):
    """Components and events of the guidelines tab; returns (refresh function, its outputs)."""

    def refresh(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        table, preview = versions_html(ctx)
        now = guideline_actions.current(engine=ctx.rt.engine)
        return (now[1] if now else ""), table, preview

    def publish(text: Any, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        try:
            if not isinstance(text, str):
                raise ValueError("text: expected Markdown text")
            version = guideline_actions.publish(
                engine=ctx.rt.engine, text=text, user_id=admin.id, via="admin"
            )
        except ValueError as exc:
            return _error(f"Guidelines {exc}"), *versions_html(ctx)
        message = _ok(f"Guidelines version {version} published: annotators see them at once.")
        return message, *versions_html(ctx)

    gr.Markdown(
        "**Guidelines** (Markdown) shown above every pair in a collapsible panel, opened again "
        "for everyone when a new version is published; each label records its version. Links "
        "keep only http(s) and mailto targets, raw HTML shows as text, and images are not shown."
    )
    text = gr.Textbox(
        label="Guidelines (Markdown)", lines=14, max_lines=40, elem_id="pf-guideline-text"
    )
    publish_button = gr.Button("Publish new version", elem_id="pf-guideline-publish")
    result = html(elem_id="pf-guideline-result")
    preview = html(elem_id="pf-guideline-preview")
    table = html(elem_id="pf-guideline-table")
    publish_button.click(
        publish, [text], [result, table, preview], api_name="guidelines_publish", **DIRECT
    )
    return refresh, [text, table, preview]
