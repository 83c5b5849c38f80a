"""Pieces both views share: the header, small HTML helpers."""

from __future__ import annotations

import gradio as gr

from app.ui.guard import CurrentUser
from app.ui.render import escape

# Event options for every handler of both views: one POST to /gradio_api/run/<name> per event
# (queue=False) rather than Gradio's queue (a join POST and an event stream, both held by one
# server process). Every handler is a short database transaction or queues a job, so the queue's
# ordering buys nothing, and without it any worker of `prefloop serve --workers N` can take any
# event: the views keep no state in the server process.
DIRECT = {"queue": False}


def html(value: str = "", **kwargs) -> gr.HTML:
    """A gr.HTML for server-rendered, already-escaped HTML (no click listener)."""
    return gr.HTML(value, js_on_load=None, **kwargs)


def header_html(user: CurrentUser | None, *, page: str) -> str:
    if user is None:
        return '<div class="pf-header"><span class="brand">prefloop</span></div>'
    links = ['<a href="/label/">Label</a>'] if page != "label" else []
    if user.is_admin and page != "admin":
        links.append('<a href="/admin/">Admin</a>')
    links.append('<a href="/logout" id="pf-logout">Log out</a>')
    return (
        '<div class="pf-header"><span class="brand">prefloop</span>'
        f'<span>Signed in as <b id="pf-user">{escape(user.name)}</b> ({escape(user.role)})'
        f"<nav>{''.join(links)}</nav></span></div>"
    )
