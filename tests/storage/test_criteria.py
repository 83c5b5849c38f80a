"""Judgments per criterion (labeling.criteria) on SQLite and PostgreSQL: stored per label in the
pair's a/b, deciding pairs for one criterion (dpo.criterion), exported as columns, and their
agreement reported."""

from __future__ import annotations

import random

import pytest

from labeling.export import ExportFilters, export_preferences, load_export
from storage import queue
from storage.db import transaction
from storage.models import Label
from storage.preferences import iter_preferences
from tests.factories import make_pairs, make_user

CRITERIA = ("helpfulness", "harmlessness")


def _label(engine, user_id, shown_choice, criteria, swapped):
    """Claim the next pair shown in the given order, and label it."""
    with transaction(engine) as session:
        claim = queue.claim_next_pair(
            session=session,
            user_id=user_id,
            lease_seconds=60,
            rng=random.Random(0 if not swapped else 3),
        )
        assert claim.swapped == swapped
        return queue.submit_label(
            session=session,
            user_id=user_id,
            pair_id=claim.pair_id,
            shown_choice=shown_choice,
            criteria=criteria,
            allowed_criteria=CRITERIA,
        )


def test_judgments_are_stored_in_the_pairs_terms_and_checked(engine):
    assert random.Random(0).random() >= 0.5 and random.Random(3).random() < 0.5
    with transaction(engine) as session:
        ann = make_user(session).id
        make_pairs(session, 3)
    shown = _label(engine, ann, "left", {"helpfulness": "left", "harmlessness": "tie"}, False)
    swapped = _label(engine, ann, "left", {"helpfulness": "left"}, True)
    assert shown.criteria == {"helpfulness": "a", "harmlessness": "tie"}
    assert (swapped.choice, swapped.criteria) == ("b", {"helpfulness": "b"})
    with transaction(engine) as session:
        claim = queue.claim_next_pair(session=session, user_id=ann, lease_seconds=60)
        for criteria, message in (
            ({"honesty": "left"}, "'honesty' is no criterion"),
            ({"helpfulness": "both_bad"}, "criteria.helpfulness: 'both_bad'"),
        ):
            with pytest.raises(ValueError, match=message):
                queue.submit_label(
                    session=session,
                    user_id=ann,
                    pair_id=claim.pair_id,
                    shown_choice="tie",
                    criteria=criteria,
                    allowed_criteria=CRITERIA,
                )
        plain = queue.submit_label(
            session=session, user_id=ann, pair_id=claim.pair_id, shown_choice="tie", criteria={}
        )
        assert plain.criteria is None
    with transaction(engine, readonly=True) as session:
        stored = {lab.id: lab.criteria for lab in session.exec(Label.__table__.select())}
    assert stored == {
        shown.id: {"helpfulness": "a", "harmlessness": "tie"},
        swapped.id: {"helpfulness": "b"},
        plain.id: None,
    }


def _pair_with(session, users, labels):
    """A pair with one human label per (choice, criteria) in `labels`."""
    from storage.models import LabelSource, PairStatus

    (pair,) = make_pairs(session, 1, overlap=len(labels))
    for user, (choice, criteria) in zip(users, labels, strict=False):
        session.add(
            Label(
                pair_id=pair.id,
                user_id=user.id,
                source=LabelSource.human,
                choice=choice,
                criteria=criteria,
            )
        )
    pair.n_labels, pair.status = len(labels), PairStatus.done
    session.add(pair)
    session.flush()
    return pair.id


def test_a_criterion_decides_pairs_and_the_rows_carry_every_criterion(engine, tmp_path):
    from labeling.quality import quality_report

    with transaction(engine) as session:
        ann, bob, cat = (make_user(session, name=n) for n in ("ann", "bob", "cat"))
        users = (ann, bob, cat)
        # overall a; helpful b (2 of 3); harmless a for all
        split = _pair_with(
            session,
            users,
            [
                ("a", {"helpfulness": "b", "harmlessness": "a"}),
                ("a", {"helpfulness": "b", "harmlessness": "a"}),
                ("b", {"helpfulness": "a", "harmlessness": "a"}),
            ],
        )
        # overall b, no judgments at all
        plain = _pair_with(session, users, [("b", None)])
        # overall tie, harmless b
        tied = _pair_with(session, users, [("tie", {"harmlessness": "b"})])
        overall = {r.pair_id: r for r in iter_preferences(session=session)}
        helpful = {r.pair_id: r for r in iter_preferences(session=session, criterion="helpfulness")}
        harmless = {
            r.pair_id: r for r in iter_preferences(session=session, criterion="harmlessness")
        }
    assert set(overall) == {split, plain}
    assert overall[split].criteria == {"helpfulness": "rejected", "harmlessness": "chosen"}
    assert overall[plain].criteria == {}
    assert set(helpful) == {split} and helpful[split].agreement == pytest.approx(2 / 3)
    assert helpful[split].chosen == overall[split].rejected  # helpfulness says b
    assert helpful[split].criteria == {"helpfulness": "chosen", "harmlessness": "rejected"}
    assert set(harmless) == {split, tied} and harmless[tied].agreement == 1.0

    out = export_preferences(
        engine=engine, out=tmp_path / "p.parquet", format="parquet", criteria=CRITERIA
    )
    rows = {r["pair_id"]: r for r in load_export(out.path, "parquet")}
    assert rows[split]["criterion_helpfulness"] == "rejected"
    assert rows[plain]["criterion_harmlessness"] is None
    out = export_preferences(
        engine=engine,
        out=tmp_path / "h.jsonl",
        format="jsonl",
        criteria=CRITERIA,
        filters=ExportFilters(criterion="harmlessness"),
    )
    rows = {r["pair_id"]: r for r in load_export(out.path, "jsonl")}
    assert set(rows) == {split, tied} and rows[tied]["criterion_harmlessness"] == "chosen"
    assert out.filters["criterion"] == "harmlessness"

    report = quality_report(engine=engine)
    helpfulness = report["criteria"]["helpfulness"]
    # three judgments on one pair: 3 comparisons, 1 of them matching (ann-bob)
    assert (helpfulness["pairs_multi_judged"], helpfulness["n"]) == (1, 3)
    assert helpfulness["agreement"] == pytest.approx(1 / 3, abs=1e-4)
    assert report["criteria"]["harmlessness"]["agreement"] == 1.0
    by_name = {a["name"]: a["criteria_agreement"] for a in report["annotators"]}
    assert by_name["ann"] == {"helpfulness": 0.5, "harmlessness": 1.0}
    assert by_name["cat"] == {"helpfulness": 0.0, "harmlessness": 1.0}
