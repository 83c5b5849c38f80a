"""Agreement metrics on labels whose answers are known."""

from __future__ import annotations

import random

import pytest
from sqlmodel import select

from labeling.quality import cohens_kappa, krippendorff_alpha, quality_report
from labeling.simulate import simulated_choice
from storage.db import transaction
from storage.models import Choice, Label, Route, Suggestion, User
from tests.factories import make_pairs, make_user


def test_cohens_kappa_known_values():
    assert cohens_kappa(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == 1.0
    assert cohens_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == 0.0
    # 20 items: p_o = 0.7, p_e = 0.5 -> 0.4
    x = ["a"] * 10 + ["b"] * 10
    y = ["a"] * 7 + ["b"] * 3 + ["a"] * 3 + ["b"] * 7
    assert cohens_kappa(x, y) == pytest.approx(0.4)
    assert cohens_kappa(["a", "a"], ["a", "a"]) is None


def test_krippendorff_alpha_perfect_and_missing():
    perfect = {
        1: {1: Choice.a, 2: Choice.a},
        2: {1: Choice.b, 2: Choice.b, 3: Choice.b},
        3: {1: Choice.tie},
    }
    assert krippendorff_alpha(perfect) == pytest.approx(1.0)
    disagree = {1: {1: Choice.a, 2: Choice.b}, 2: {1: Choice.b, 2: Choice.a}}
    assert krippendorff_alpha(disagree) < 0


def test_simulated_annotator_follows_the_judge_under_noise():
    rng = random.Random(0)
    assert simulated_choice(7, 3, noise=0, rng=rng, both_bad_below=0) == "left"
    assert simulated_choice(5, 5, noise=1, rng=rng, both_bad_below=0) == "tie"
    assert simulated_choice(0.5, 1, noise=1, rng=rng, both_bad_below=2) == "both_bad"
    picks = [simulated_choice(6, 5, noise=1, rng=rng, both_bad_below=0) for _ in range(4000)]
    assert picks.count("left") / 4000 == pytest.approx(0.731, abs=0.03)  # σ(1)


def test_calibration_error_known_values():
    from labeling.quality import calibration_error

    assert (
        calibration_error([0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], [1] * 7 + [0] * 3)
        == 0
    )
    # two bins: P 0.95 wins 1 of 2 (off by 0.45), P 0.15 wins 0 of 2 (off by 0.15)
    assert calibration_error([0.95, 0.95, 0.15, 0.15], [1, 0, 0, 0]) == pytest.approx(0.3)
    assert calibration_error([1.0], [1]) == 0  # P = 1 falls in the last bin
    assert calibration_error([], []) is None


def test_quality_report(engine):
    with transaction(engine) as session:
        u1, u2 = make_user(session, name="ann"), make_user(session, name="bob")
        pairs = make_pairs(session, 6, overlap=2)
        audit = make_pairs(session, 2, route=Route.audit)
        plan = [  # (pair, ann, bob)
            (pairs[0], Choice.a, Choice.a),
            (pairs[1], Choice.b, Choice.b),
            (pairs[2], Choice.a, Choice.b),
            (pairs[3], Choice.tie, Choice.tie),
            (pairs[4], Choice.b, Choice.b),
            (pairs[5], Choice.a, Choice.a),
        ]
        for pair, c1, c2 in plan:
            session.add(Label(pair_id=pair.id, user_id=u1.id, choice=c1, seconds=4.0))
            session.add(Label(pair_id=pair.id, user_id=u2.id, choice=c2, seconds=10.0))
            session.add(Suggestion(pair_id=pair.id, p_a=0.8, agent="proxy:v1"))
        # audits: the proxy says a on both; humans say a, then b
        for pair, choice in zip(audit, (Choice.a, Choice.b), strict=True):
            session.add(Suggestion(pair_id=pair.id, p_a=0.9, agent="proxy:v1"))
            session.add(Label(pair_id=pair.id, user_id=u1.id, choice=choice, seconds=6.0))
    report = quality_report(engine=engine)
    assert report["human_labels"] == 14 and report["pairs_multi_labeled"] == 6
    [kappa] = report["cohen_kappa"]
    assert (kappa["a"], kappa["b"], kappa["n"]) == ("ann", "bob", 6)
    # p_o = 5/6, p_e = (3·2 + 2·3 + 1·1)/36 = 13/36: κ = (30 − 13)/(36 − 13) = 17/23
    assert kappa["kappa"] == pytest.approx(17 / 23, abs=1e-4)
    # nominal α from the coincidence matrix: o_aa = o_bb = 4, o_tt = 2, o_ab = o_ba = 1 (n = 12);
    # D_o = 2/12, D_e = 2(5·5 + 5·2 + 5·2)/(12·11) = 90/132, α = 1 − D_o/D_e = 1 − 264/1080
    assert report["krippendorff_alpha"] == pytest.approx(1 - 264 / 1080, abs=1e-4)
    # a/b labels against P > 0.5 ("a"): ann 4 of 7, bob 2 of 5 (ties are left out)
    assert (report["human_proxy_agreement"], report["human_proxy_n"]) == (0.5, 12)
    assert (report["proxy_audit_accuracy"], report["proxy_audit_n"]) == (0.5, 2)
    # P = 0.8 on 10 a/b labels of which 5 say a, P = 0.9 on 2 of which 1: (10·0.3 + 2·0.4) / 12
    assert report["proxy_calibration_error"] == pytest.approx(3.8 / 12, abs=1e-4)
    assert report["proxy_calibration_n"] == 12
    ann, bob = report["annotators"]
    assert (ann["name"], ann["labels"], ann["median_seconds"]) == ("ann", 8, 4.0)
    assert (bob["labels"], bob["median_seconds"]) == (6, 10.0)
    # ann's a/b labels: a a a b b(audit) ... agreement with p_a > 0.5 means "a"
    assert ann["proxy_agreement"] == pytest.approx(4 / 7, abs=1e-4)


def test_the_annotator_dashboard_and_an_annotators_own_figures(engine):
    """Pace (labels per hour of labeling, median, the share too fast), kappa with peers, gold
    accuracy and flag per annotator; and one annotator's own figures from their pairs alone."""
    from labeling.quality import annotator_figures
    from storage import gold
    from storage.crud import PromptIn
    from storage.settings import LabelingSettings

    labeling = LabelingSettings(too_fast_seconds=3.0, min_gold_seen=2, min_gold_accuracy=0.8)
    with transaction(engine) as session:
        ann, bob, cat = (make_user(session, name=n) for n in ("ann", "bob", "cat"))
        shared = make_pairs(session, 6, overlap=2)
        # ann and bob agree on 4 of 6 (a a b b | a b)
        for pair, (c1, c2) in zip(
            shared,
            [("a", "a"), ("a", "a"), ("b", "b"), ("b", "b"), ("a", "b"), ("b", "a")],
            strict=True,
        ):
            session.add(Label(pair_id=pair.id, user_id=ann.id, choice=c1, seconds=2.0))
            session.add(Label(pair_id=pair.id, user_id=bob.id, choice=c2, seconds=9.0))
        gold.add_gold_pairs(
            session=session,
            items=[gold.GoldIn(PromptIn(f"g{i}"), "good", "bad", Choice.a) for i in range(2)],
        )
        for pair_id in gold.gold_answers(session=session):  # cat gets both wrong
            session.add(Label(pair_id=pair_id, user_id=cat.id, choice=Choice.b, seconds=1.0))
    report = quality_report(engine=engine, labeling=labeling)
    rows = {a["name"]: a for a in report["annotators"]}
    assert report["too_fast_seconds"] == 3.0 and set(rows) == {"ann", "bob", "cat"}
    assert (rows["ann"]["labels_per_hour"], rows["ann"]["too_fast_share"]) == (1800.0, 1.0)
    assert (rows["bob"]["labels_per_hour"], rows["bob"]["too_fast_share"]) == (400.0, 0.0)
    # p_o = 4/6, p_e = 1/2 (each said a three times): κ = 1/3, their only peer
    assert rows["ann"]["peer_kappa"] == rows["bob"]["peer_kappa"] == pytest.approx(1 / 3, abs=1e-4)
    assert (rows["cat"]["labels"], rows["cat"]["gold_seen"], rows["cat"]["gold_accuracy"]) == (
        0,
        2,
        0.0,
    )
    assert rows["cat"]["gold_flagged"] and rows["cat"]["labels_left_out"]
    assert not rows["ann"]["gold_flagged"] and rows["ann"]["gold_accuracy"] is None

    with transaction(engine, readonly=True) as session:
        ann_id = session.exec(select(User.id).where(User.name == "ann")).one()
    own = annotator_figures(engine=engine, user_id=ann_id, labeling=labeling)
    assert (own["labels"], own["median_seconds"], own["too_fast_share"]) == (6, 2.0, 1.0)
    assert (own["peer_agreement"], own["peer_n"]) == (pytest.approx(4 / 6, abs=1e-4), 6)
    assert own["gold_seen"] == 0 and own["gold_accuracy"] is None
