"""The admin view's settings form: every editable key shows its value in its widget and reads
back as the same setting, lists of names and unset optional keys included."""

from __future__ import annotations

import pytest

from app.ui.admin_settings import FIELDS, _current, parse, to_widget
from storage.settings import Settings, with_overrides

CRITERIA = {
    "labeling.criteria": ["helpfulness", "harmlessness"],
    "dpo.criterion": "harmlessness",
    "loop.interval_minutes": 30.0,
}


@pytest.mark.parametrize("overrides", [{}, CRITERIA], ids=["defaults", "criteria"])
def test_every_field_reads_back_as_the_setting_it_shows(tmp_path, overrides):
    settings = with_overrides(Settings(data_dir=tmp_path), overrides)
    for field in FIELDS:
        value = _current(settings, field.key)
        assert parse(field, to_widget(field, value)) == value, field.key
    kinds = {f.key: f.kind for f in FIELDS}
    assert kinds["labeling.criteria"] == "text_list"
    assert kinds["dpo.criterion"] == "optional_text"


def test_an_emptied_box_unsets_an_optional_key_and_lists_are_split_on_commas():
    fields = {f.key: f for f in FIELDS}
    assert parse(fields["dpo.criterion"], "  ") is None
    assert parse(fields["loop.interval_minutes"], "") is None
    assert parse(fields["labeling.criteria"], " helpfulness,, harmlessness ") == [
        "helpfulness",
        "harmlessness",
    ]
    assert parse(fields["labeling.criteria"], "") == []
    with pytest.raises(ValueError, match="generation.temperatures"):
        parse(fields["generation.temperatures"], "1.0, warm")


def test_a_reply_budget_that_leaves_the_policy_no_room_is_refused_before_it_is_saved(
    tmp_path, demo_policy_dir
):
    """generation.max_new_tokens as long as the deployed policy's context made every later round
    fail ("no active train prompt can be sampled"); the settings tab refuses it, naming both."""
    import gradio as gr

    from app.ui.admin_settings import build_settings
    from app.ui.guard import AppContext
    from storage import crud
    from storage.db import transaction, upgrade
    from storage.models import PolicyStatus, Role
    from storage.runtime import open_runtime
    from tests.app.live_server import seed_users
    from tests.app.test_server import _as_user, _handlers

    rt = open_runtime(tmp_path)
    upgrade(rt.engine)
    ctx = AppContext(rt=rt, secret=b"s" * 32)
    with transaction(rt.engine) as session:
        crud.create_policy(
            session=session, version=0, path=str(demo_policy_dir), status=PolicyStatus.deployed
        )
    with gr.Blocks() as blocks:
        _, outputs = build_settings(ctx)
    save = _handlers(blocks)["settings_save"]
    as_boss = _as_user(ctx, seed_users(rt, {"boss": Role.admin})["boss"])
    widgets, loaded_box = outputs[:-2], outputs[-2]
    shown = {f.key: to_widget(f, _current(rt.settings, f.key)) for f in FIELDS}

    def save_budget(tokens: int) -> str:
        values = {w: shown[f.key] for f, w in zip(FIELDS, widgets, strict=True)}
        values[widgets[[f.key for f in FIELDS].index("generation.max_new_tokens")]] = tokens
        return save({**values, loaded_box: "null"}, as_boss)

    refused = save_budget(256)
    assert (
        "generation.max_new_tokens: the policy&#x27;s context is 256 tokens and "
        "generation.max_new_tokens (256) leaves none for a prompt: lower "
        "generation.max_new_tokens (policy v0)"
    ) in refused
    with transaction(rt.engine, readonly=True) as session:
        assert crud.get_overrides(session=session) == {}
    assert "Saved: generation.max_new_tokens = 200" in save_budget(200)
    rt.engine.dispose()
