"""Admin view, annotators tab: gold standing, lifting a flag, marking a pair gold, importing gold
pairs; called as the page's events are, each refusing an annotator."""

from __future__ import annotations

import gradio as gr
import pytest
from sqlmodel import select

from app.ui.admin_annotators import build_annotators
from app.ui.guard import AppContext, Refused
from storage import crud, gold, queue
from storage.db import transaction, upgrade
from storage.models import Role
from storage.runtime import open_runtime
from tests.app.live_server import seed_users
from tests.app.test_server import _as_user, _handlers
from tests.factories import make_pairs
from tests.labeling.test_importing import write_jsonl


@pytest.fixture
def ctx(tmp_path):
    rt = open_runtime(tmp_path)
    upgrade(rt.engine)
    yield AppContext(rt=rt, secret=b"s" * 32)
    rt.engine.dispose()


@pytest.fixture
def handlers(ctx):
    with gr.Blocks() as blocks:
        build_annotators(ctx)
    return _handlers(blocks)


def _audits(ctx) -> list[str]:
    with transaction(ctx.rt.engine, readonly=True) as session:
        return [a.action for a in session.exec(select(crud.Audit))]


def test_import_mark_show_lift_and_unmark_are_admin_only_and_audited(ctx, handlers, tmp_path):
    users = seed_users(ctx.rt, {"boss": Role.admin, "ann": Role.annotator})
    boss, ann = _as_user(ctx, users["boss"]), _as_user(ctx, users["ann"])
    rows = [
        {"prompt": f"q{i}", "a": f"<b>good</b> {i}", "b": f"bad {i}", "answer": "a"}
        for i in range(2)
    ]
    path = write_jsonl(tmp_path / "gold.jsonl", rows)
    for name, args in {
        "gold_import": (str(path),),
        "gold_mark": (1, "a"),
        "gold_unmark": (1,),
        "gold_show": (1,),
        "gold_lift": ("ann",),
    }.items():
        with pytest.raises(Refused, match="Admins only"):
            handlers[name](*args, ann)
    assert _audits(ctx) == []

    message, _ = handlers["gold_import"](str(path), boss)
    assert "2 gold pairs added" in message
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "a": "x", "b": "y"}])
    message, _ = handlers["gold_import"](str(bad), boss)
    assert "bad.jsonl, line 1, field &#x27;answer&#x27;" in message and "Nothing" in message

    with transaction(ctx.rt.engine) as session:
        pair_id = make_pairs(session, 1)[0].id
        user = crud.get_user_by_name(session=session, name="ann")
        claim = queue.claim_next_pair(session=session, user_id=user.id, lease_seconds=60)
        queue.submit_label(
            session=session,
            user_id=user.id,
            pair_id=claim.pair_id,
            shown_choice="left",
            reason="<script>x</script> looks better",
        )
    shown = handlers["gold_show"](pair_id, boss)
    assert f'data-pair="{pair_id}"' in shown and "ann" in shown
    assert "<script>" not in shown and "&lt;script&gt;" in shown
    assert "pf-error" in handlers["gold_show"](10**6, boss)
    assert "Pair id" in handlers["gold_show"](1.5, boss)
    message, standing = handlers["gold_mark"](pair_id, "b", boss)
    assert "is a gold pair" in message and "No gold labels yet" in standing
    message, _ = handlers["gold_mark"](pair_id, "left", boss)
    assert "Answer: expected one of" in message
    message, _ = handlers["gold_mark"](pair_id, "b", boss)
    assert "gold pair already" in message

    with transaction(ctx.rt.engine) as session:  # a gold label by ann (counts: made after)
        user = crud.get_user_by_name(session=session, name="ann")
        claim = queue.claim_next_pair(
            session=session, user_id=user.id, lease_seconds=60, gold_rate=1.0
        )
        queue.submit_label(
            session=session, user_id=user.id, pair_id=claim.pair_id, shown_choice="tie"
        )
        assert gold.gold_answers(session=session)[claim.pair_id] in ("a", "b")
    message, standing = handlers["gold_lift"]("ann", boss)
    assert "flag lifted" in message and 'data-annotator="ann"' in standing
    message, _ = handlers["gold_lift"]("nobody", boss)
    assert "no user" in message
    message, _ = handlers["gold_unmark"](pair_id, boss)
    assert "no longer a gold pair" in message
    assert _audits(ctx) == ["gold.import", "gold.mark", "gold.lift", "gold.remove"]
    table, plot, standing = handlers["dashboard_refresh"](boss)
    assert '<tr data-annotator="ann">' in table and "pf-dashboard-plot" in plot
    assert plot.count('data-figure="gold_accuracy"') == 1  # ann's one gold label
    with pytest.raises(Refused):
        handlers["dashboard_refresh"](ann)
