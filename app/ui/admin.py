"""The admin view (placeholder until its sections land)."""

from __future__ import annotations

import gradio as gr

from app.ui.common import header_html, html
from app.ui.guard import AppContext, require_user
from storage.models import Role


def build_admin(ctx: AppContext) -> gr.Blocks:
    def show(request: gr.Request):
        user = require_user(ctx, request, role=Role.admin)
        return header_html(user, page="admin")

    with gr.Blocks(title="prefloop · admin") as blocks:
        header = html(header_html(None, page="admin"))
        blocks.load(show, None, [header], api_name="show")
    return blocks
