"""NUL characters (storage/text.py) on SQLite and PostgreSQL alike: what a person gives is refused
naming its field and nothing is stored; a lookup by a name holding one finds nothing (PostgreSQL
would refuse the query); a model's reply keeps its text, the NUL shown as U+FFFD."""

from __future__ import annotations

import math

import pytest
from sqlmodel import select

from storage import crud, queue, review
from storage.db import transaction
from storage.models import Label, LabelSource, Role
from storage.preferences import iter_preferences
from storage.text import model_text
from tests.factories import label_pair, make_pairs, make_policy, make_user


def test_a_reason_with_a_nul_is_refused_and_the_pair_stays_claimed(engine):
    with transaction(engine) as session:
        ann = make_user(session, name="ann")
        (pair,) = make_pairs(session, 1)
        assert queue.claim_next_pair(session=session, user_id=ann.id, lease_seconds=600)
    refused = pytest.raises(ValueError, match=r"reason: a NUL character \(\\x00\) at character 3")
    with refused, transaction(engine) as session:
        queue.submit_label(
            session=session, user_id=ann.id, pair_id=pair.id, shown_choice="left", reason="ab\x00"
        )
    with transaction(engine) as session:
        assert session.exec(select(Label)).all() == []
        label = queue.submit_label(
            session=session, user_id=ann.id, pair_id=pair.id, shown_choice="left", reason="clear"
        )
        assert label.reason == "clear"


def test_a_review_note_with_a_nul_is_refused_and_the_pair_stays_unsettled(engine):
    with transaction(engine) as session:
        ann, bob = make_user(session, name="ann"), make_user(session, name="bob")
        boss = make_user(session, name="boss", role=Role.admin)
        (pair,) = make_pairs(session, 1, overlap=2)
        label_pair(session, pair, "a", "b", users=(ann, bob))
    with pytest.raises(ValueError, match=r"note: a NUL character"), transaction(engine) as session:
        review.settle(session=session, pair_id=pair.id, choice="a", user_id=boss.id, note="a\x00")
    with transaction(engine, readonly=True) as session:
        sources = session.exec(select(Label.source).where(Label.pair_id == pair.id)).all()
    assert sorted(sources) == [LabelSource.human, LabelSource.human]


def test_names_with_a_nul_are_refused_and_find_no_one(engine):
    with transaction(engine) as session:
        make_user(session, name="ann")
        (pair,) = make_pairs(session, 1)
        label_pair(session, pair, "a", users=(crud.get_user_by_name(session=session, name="ann"),))
    with pytest.raises(ValueError, match="printable"), transaction(engine) as session:
        crud.create_user(session=session, name="bo\x00b", role=Role.annotator, password_hash=None)
    with transaction(engine, readonly=True) as session:
        assert crud.get_user_by_name(session=session, name="ann\x00") is None
        assert [u.name for u in session.exec(select(crud.User))] == ["ann"]
        # the export's annotator filter: a name with a NUL matches no one, the others still do
        rows = iter_preferences(session=session, annotators=["ann", "x\x00"])
        assert [r.pair_id for r in rows] == [pair.id]
        assert list(iter_preferences(session=session, annotators=["ann\x00"])) == []


def test_a_models_nul_is_kept_as_the_replacement_character():
    assert model_text("a\x00b\x00") == "a\ufffdb\ufffd"
    assert model_text("plain") == "plain"


def test_non_finite_floats_in_a_json_column_are_stored_as_null(engine):
    metrics = {"loss": float("nan"), "eval": {"margin": float("inf"), "steps": [1.5, -math.inf]}}
    with transaction(engine) as session:
        policy = make_policy(session, deployed=False)
        policy.metrics = {**metrics, "n_pairs": 64}
        session.add(policy)
    with transaction(engine, readonly=True) as session:
        stored = crud.get_policy(session=session, version=0).metrics
    assert stored == {"loss": None, "eval": {"margin": None, "steps": [1.5, None]}, "n_pairs": 64}
