"""Admin view, review tab: the disputed pairs and settling one, called as the page's events are."""

from __future__ import annotations

import gradio as gr
import pytest
from sqlmodel import select

from app.ui.admin_review import build_review
from app.ui.guard import AppContext, Refused
from storage import crud
from storage.db import transaction, upgrade
from storage.models import Choice, Label, LabelSource, Pair, PairStatus, Role
from storage.runtime import open_runtime
from tests.app.live_server import seed_users
from tests.app.test_server import _as_user, _handlers
from tests.factories import label_pair, make_pairs


@pytest.fixture
def ctx(tmp_path):
    rt = open_runtime(tmp_path)
    upgrade(rt.engine)
    yield AppContext(rt=rt, secret=b"s" * 32)
    rt.engine.dispose()


def disputed_pair(ctx, choices=("a", "b"), reasons=("<script>alert(1)</script>", None)) -> int:
    """A pair labeled by ann and bob, who disagree."""
    with transaction(ctx.rt.engine) as session:
        (pair,) = make_pairs(session, 1, overlap=2)
        users = [crud.get_user_by_name(session=session, name=n) for n in ("ann", "bob")]
        label_pair(session, pair, *choices, users=users, reasons=reasons)
        return pair.id


def test_the_disputed_pairs_and_a_decision_admin_only_and_audited(ctx):
    with gr.Blocks() as blocks:
        refresh, _ = build_review(ctx)
    handlers = _handlers(blocks)
    users = seed_users(ctx.rt, {"boss": Role.admin, "ann": Role.annotator, "bob": Role.annotator})
    boss, ann = _as_user(ctx, users["boss"]), _as_user(ctx, users["ann"])
    pair_id = disputed_pair(ctx)
    for name, args in {
        "review_settle": (pair_id, "a", "", False),
        "review_list": (False,),
    }.items():
        with pytest.raises(Refused, match="Admins only"):
            handlers[name](*args, ann)
    with pytest.raises(Refused):
        refresh(ann)
    shown = refresh(boss)
    assert "1 pairs whose labels disagree" in shown and f'data-pair="{pair_id}"' in shown
    assert "<script>" not in shown and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    message, listed = handlers["review_settle"](pair_id, "left", "", False, boss)
    assert "Decision: expected one of" in message
    message, listed = handlers["review_settle"](0, "a", "", False, boss)
    assert "Pair id" in message
    message, listed = handlers["review_settle"](pair_id, "b", " clearer ", False, boss)
    assert "settled: b better" in message and "0 pairs whose labels disagree" in listed
    assert f'data-pair="{pair_id}"' in handlers["review_list"](True, boss)
    with transaction(ctx.rt.engine, readonly=True) as session:
        decision = session.exec(select(Label).where(Label.source == LabelSource.review)).one()
        audits = [a for a in session.exec(select(crud.Audit)) if a.action == "review.settle"]
        assert session.get(Pair, pair_id).status == PairStatus.done
    assert (decision.choice, decision.reason) == (Choice.b, "clearer")
    assert len(audits) == 1 and audits[0].detail == {
        "via": "admin",
        "pair_id": pair_id,
        "choice": "b",
    }
