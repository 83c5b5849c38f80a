"""Admin view, guidelines tab, and the panel on the labeling page: published as versions
(audited, admins only), rendered as safely as model output."""

from __future__ import annotations

import gradio as gr
import pytest
from sqlmodel import select

from app.ui.admin_guidelines import build_guidelines
from app.ui.annotate import guidelines_html
from app.ui.guard import AppContext, Refused
from storage import crud
from storage.db import transaction, upgrade
from storage.models import Role
from storage.runtime import open_runtime
from tests.app.live_server import seed_users
from tests.app.test_server import _as_user, _handlers

UNSAFE = (
    "# Rules\n\n<script>window.__pwned=1</script> [x](javascript:alert(1)) ![i](http://x/i.png)"
)


@pytest.fixture
def ctx(tmp_path):
    rt = open_runtime(tmp_path)
    upgrade(rt.engine)
    yield AppContext(rt=rt, secret=b"s" * 32)
    rt.engine.dispose()


def test_publish_is_admin_only_versioned_audited_and_rendered_safely(ctx):
    with gr.Blocks() as blocks:
        refresh, _ = build_guidelines(ctx)
    publish = _handlers(blocks)["guidelines_publish"]
    users = seed_users(ctx.rt, {"boss": Role.admin, "ann": Role.annotator})
    boss, ann = _as_user(ctx, users["boss"]), _as_user(ctx, users["ann"])
    with pytest.raises(Refused, match="Admins only"):
        publish("Rules", ann)
    with pytest.raises(Refused):
        refresh(ann)
    assert refresh(boss)[0] == ""
    message, table, preview = publish(UNSAFE, boss)
    assert "version 1 published" in message and "<td>v1</td>" in table
    assert "<script>" not in preview and "&lt;script&gt;" in preview
    assert 'href="javascript' not in preview
    assert "<img" not in preview and "<h1>Rules</h1>" in preview
    message, _, _ = publish(UNSAFE, boss)
    assert "the same as version 1" in message
    message, _, _ = publish("  ", boss)
    assert "empty" in message
    text, table, _ = refresh(boss)
    assert text == UNSAFE
    with transaction(ctx.rt.engine, readonly=True) as session:
        audits = session.exec(select(crud.Audit).where(crud.Audit.action == "guidelines.publish"))
        assert [a.detail["version"] for a in audits] == [1]


def test_the_labeling_page_panel_is_closed_as_sent_and_names_its_version():
    panel = guidelines_html(3, "Prefer **kind** replies.")
    assert panel.startswith('<details class="pf-guidelines" id="pf-guidelines" data-version="3">')
    assert "(version 3)" in panel and "<strong>kind</strong>" in panel
