"""The admin view: tabs for the loop, settings, users, data, plots, the human evaluation and the
annotators (gold accuracy, gold pairs), the review of disagreements and the guidelines. Every handler in the tab
modules checks for an admin itself (`require_user(..., role=Role.admin)`)."""

from __future__ import annotations

import gradio as gr

from app.ui.admin_annotators import build_annotators
from app.ui.admin_data import build_data
from app.ui.admin_eval import build_eval
from app.ui.admin_guidelines import build_guidelines
from app.ui.admin_loop import build_loop
from app.ui.admin_plots import build_plots
from app.ui.admin_review import build_review
from app.ui.admin_settings import build_settings
from app.ui.admin_users import build_users
from app.ui.common import DIRECT, header_html, html
from app.ui.guard import AppContext, require_user
from storage.models import Role


def build_admin(ctx: AppContext) -> gr.Blocks:
    def show(request: gr.Request):
        user = require_user(ctx, request, role=Role.admin)
        return header_html(user, page="admin")

    with gr.Blocks(title="prefloop · admin") as blocks:
        header = html(header_html(None, page="admin"))
        loaders = []
        with gr.Tabs():
            with gr.Tab("Loop", id="loop"):
                loaders.append(build_loop(ctx))
            with gr.Tab("Settings", id="settings"):
                loaders.append(build_settings(ctx))
            with gr.Tab("Users", id="users"):
                loaders.append(build_users(ctx))
            with gr.Tab("Data", id="data"):
                build_data(ctx)
            with gr.Tab("Plots", id="plots"):
                loaders.append(build_plots(ctx))
            with gr.Tab("Evaluation", id="evaluation"):
                loaders.append(build_eval(ctx))
            with gr.Tab("Annotators", id="annotators"):
                loaders.append(build_annotators(ctx))
            with gr.Tab("Review", id="review"):
                loaders.append(build_review(ctx))
            with gr.Tab("Guidelines", id="guidelines"):
                loaders.append(build_guidelines(ctx))
        blocks.load(show, None, [header], api_name="show", **DIRECT)
        for i, (refresh, outputs) in enumerate(loaders):
            blocks.load(refresh, None, outputs, api_name=f"load_{i}", **DIRECT)
    blocks.queue(default_concurrency_limit=4)
    return blocks
