"""Rewrites (storage/rewrites.py) on SQLite and PostgreSQL: an edited response stored as a new
response linked to its original, and a decided pair preferring it, trained on and exported like
any decided pair, marked as an edit."""

from __future__ import annotations

import random

import pytest
from sqlmodel import select

from labeling.export import export_preferences, load_export
from storage import crud, queue, rewrites
from storage.db import transaction
from storage.models import Label, Pair, PairStrategy, Response, Route
from storage.preferences import iter_preferences
from tests.factories import make_pairs, make_user


def test_a_rewrite_sent_with_a_label_is_a_new_response_and_a_pair_preferring_it(engine, tmp_path):
    with transaction(engine) as session:
        ann = make_user(session).id
        iteration = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=1, human_budget=1
        )
        (pair,) = make_pairs(session, 1, iteration_id=iteration.id)
        text_b = session.get(Response, pair.response_b_id).text
    with transaction(engine) as session:
        claim = queue.claim_next_pair(
            session=session, user_id=ann, lease_seconds=60, rng=random.Random(3)
        )
        assert claim.swapped  # b is on the left
        for _ in range(2):  # a repeated submit adds no second rewrite
            label, _ = queue.label_and_claim_next(
                session=session,
                user_id=ann,
                pair_id=claim.pair_id,
                shown_choice="left",
                labeling=None,
                rewrite=("left", "  A kinder, complete reply.  "),
            )
    assert label.choice == "b"
    with transaction(engine, readonly=True) as session:
        edited = session.exec(select(Response).where(Response.edited_from_id.is_not(None))).one()
        rewrite = session.exec(select(Pair).where(Pair.strategy == PairStrategy.edit)).one()
        vote = session.exec(select(Label).where(Label.pair_id == rewrite.id)).one()
        rows = {r.pair_id: r for r in iter_preferences(session=session, iterations=[0])}
    assert (
        edited.text == "A kinder, complete reply." and edited.edited_from_id == pair.response_b_id
    )
    assert edited.sampling == {"source": "human_edit", "edited_by": ann}
    assert (rewrite.response_a_id, rewrite.response_b_id) == (edited.id, pair.response_b_id)
    assert (rewrite.route, rewrite.status, rewrite.iteration_id) == (
        Route.human,
        "done",
        pair.iteration_id,
    )
    assert (vote.user_id, vote.choice, vote.source) == (ann, "a", "human")
    row = rows[rewrite.id]
    assert (row.chosen, row.rejected, row.strategy) == (edited.text, text_b, "edit")
    out = export_preferences(engine=engine, out=tmp_path / "p.jsonl", format="jsonl")
    exported = {r["pair_id"]: r for r in load_export(out.path, "jsonl")}
    assert exported[rewrite.id]["strategy"] == "edit"
    assert exported[rewrite.id]["chosen"] == "A kinder, complete reply."


def test_bad_rewrites_store_nothing(engine):
    from storage.models import PairStrategy as Strategy

    with transaction(engine) as session:
        ann = make_user(session).id
        (pair,) = make_pairs(session, 1)
        (vote,) = make_pairs(session, 1, route=Route.eval, strategy=Strategy.eval)
        text_a = session.get(Response, pair.response_a_id).text
    for text, message in (("   ", "empty"), (text_a, "the same text"), ("x\x00", "NUL")):
        with pytest.raises(ValueError, match=message), transaction(engine) as session:
            rewrites.add_rewrite(session=session, pair_id=pair.id, user_id=ann, side="a", text=text)
    with pytest.raises(crud.Conflict), transaction(engine) as session:
        rewrites.add_rewrite(session=session, pair_id=vote.id, user_id=ann, side="a", text="new")
    with pytest.raises(ValueError, match="left or right"), transaction(engine) as session:
        claim = queue.claim_next_pair(session=session, user_id=ann, lease_seconds=60)
        queue.label_and_claim_next(
            session=session,
            user_id=ann,
            pair_id=claim.pair_id,
            shown_choice="left",
            labeling=None,
            rewrite=("middle", "new"),
        )
    with transaction(engine, readonly=True) as session:  # the label went with the rewrite
        assert session.exec(select(Label)).all() == []
        assert session.exec(select(Pair).where(Pair.strategy == PairStrategy.edit)).all() == []
