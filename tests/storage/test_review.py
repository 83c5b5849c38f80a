"""Disagreement review (storage/review.py) on SQLite and PostgreSQL: which pairs disagree, and an
admin's decision that settles one for DPO data and the export."""

from __future__ import annotations

import pytest

from storage import crud, review
from storage.db import transaction
from storage.models import Label, Pair, PairStatus, Role, Route
from storage.preferences import iter_preferences, proxy_labels
from tests.factories import label_pair, make_pairs, make_user


def test_disagreeing_pairs_are_listed_with_texts_labels_and_reasons(engine):
    with transaction(engine) as session:
        ann, bob, cat = (make_user(session, name=n) for n in ("ann", "bob", "cat"))
        split, unanimous, single, tie_vs_a, vote = make_pairs(session, 5, overlap=2)
        label_pair(
            session, split, "a", "b", users=(ann, bob), reasons=("clearer", "<b>shorter</b>")
        )
        label_pair(session, unanimous, "a", "a", users=(ann, bob))
        label_pair(session, single, "b", users=(cat,))
        label_pair(session, tie_vs_a, "tie", "a", "a", users=(ann, bob, cat))
        vote.route = Route.eval
        label_pair(session, vote, "a", "b", users=(ann, bob))
        total, pairs = review.disagreements(session=session)
    assert total == 2 and [p.pair_id for p in pairs] == [split.id, tie_vs_a.id]
    first = pairs[0]
    assert first.a.startswith("reply") and first.prompt.startswith("prompt")
    assert [(lab.annotator, lab.choice, lab.reason) for lab in first.labels] == [
        ("ann", "a", "clearer"),
        ("bob", "b", "<b>shorter</b>"),
    ]
    with transaction(engine) as session:
        assert review.disagreements(session=session, limit=1, offset=1)[1][0].pair_id == tie_vs_a.id


def test_a_decision_settles_the_pair_for_dpo_and_export_and_replaces_the_last(engine):
    with transaction(engine) as session:
        ann, bob = make_user(session, name="ann"), make_user(session, name="bob")
        boss = make_user(session, name="boss", role=Role.admin)
        split, other = make_pairs(session, 2, overlap=2)
        label_pair(session, split, "a", "b", users=(ann, bob))
        label_pair(session, other, "a", "a", users=(ann, bob))
        assert {row.pair_id for row in iter_preferences(session=session)} == {other.id}  # a draw
        review.settle(session=session, pair_id=split.id, choice="b", user_id=boss.id, note="why")
        rows = {row.pair_id: row for row in iter_preferences(session=session)}
        assert review.disagreements(session=session)[0] == 0
        assert review.disagreements(session=session, include_settled=True)[0] == 1
    row = rows[split.id]
    assert (row.source, row.annotators, row.agreement) == ("review", ["boss"], 1.0)
    assert row.chosen.startswith("reply") and row.chosen != row.rejected
    with transaction(engine) as session:
        b_text = row.chosen
        review.settle(session=session, pair_id=split.id, choice="tie", user_id=boss.id)
        # a tie decides "no row"; one decision per pair; the labels themselves stay
        assert {r.pair_id for r in iter_preferences(session=session)} == {other.id}
        labels = session.exec(Label.__table__.select().where(Label.pair_id == split.id)).all()
        assert sorted(str(lab.source) for lab in labels) == ["human", "human", "review"]
        # only the human labels are asked for: the decision needs human among the sources
        assert {r.pair_id for r in iter_preferences(session=session, sources=["proxy"])} == set()
        # an annotator filter counts those annotators' labels alone, not the decision
        ann_rows = {r.pair_id for r in iter_preferences(session=session, annotators=["bob"])}
        assert ann_rows == {split.id, other.id}
        # the proxy learns from the decision as one comparison more
        assert sum(r.pair_id == split.id for r in proxy_labels(session=session)) == 3
    assert b_text


def test_who_may_not_settle_what(engine):
    from storage.models import PairStrategy

    with transaction(engine) as session:
        ann = make_user(session, name="ann")
        boss = make_user(session, name="boss", role=Role.admin)
        (pair,) = make_pairs(session, 1, overlap=2)
        label_pair(session, pair, "a", "b", users=(ann, boss))
        (vote,) = make_pairs(session, 1, route=Route.eval, strategy=PairStrategy.eval)
        (gone,) = make_pairs(session, 1, status=PairStatus.discarded)
        with pytest.raises(crud.Conflict, match="yourself"):
            review.settle(session=session, pair_id=pair.id, choice="a", user_id=boss.id)
        with pytest.raises(crud.Conflict, match="eval pair"):
            review.settle(session=session, pair_id=vote.id, choice="a", user_id=boss.id)
        with pytest.raises(crud.Conflict, match="withdrawn"):
            review.settle(session=session, pair_id=gone.id, choice="a", user_id=boss.id)
        with pytest.raises(crud.NotFound):
            review.settle(session=session, pair_id=10**6, choice="a", user_id=boss.id)
        review.settle(session=session, pair_id=pair.id, choice="a", user_id=None)  # the CLI's
        assert session.get(Pair, pair.id).status == PairStatus.done
