"""Gold pairs (storage/gold.py) on SQLite and PostgreSQL: a third queue shown at gold_rate, each
pair once per annotator; running gold accuracy and its sticky flag; flagged annotators left out of
DPO data, the proxy's labels and the export; gold labels never preference data."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest

from storage import crud, gold, queue
from storage.crud import PromptIn
from storage.db import transaction
from storage.gold import GoldIn, GoldRule
from storage.models import GOLD_OVERLAP, Choice, Pair, PairStatus, Route, utcnow
from storage.preferences import iter_preferences, proxy_labels
from tests.factories import make_pairs, make_user


def _gold_items(n: int, answer: Choice = Choice.a, tag: str = "") -> list[GoldIn]:
    return [
        GoldIn(
            prompt=PromptIn(text=f"gold prompt {tag}{i}"),
            a=f"gold good {tag}{i}",
            b=f"gold bad {tag}{i}",
            answer=answer,
        )
        for i in range(n)
    ]


def _claim(engine, user_id, gold_rate=0.0, **kwargs):
    with transaction(engine) as session:
        return queue.claim_next_pair(
            session=session, user_id=user_id, lease_seconds=600, gold_rate=gold_rate, **kwargs
        )


def _label(engine, user_id, claim, right: bool, now=None):
    """Label the claimed pair: its response a when `right` (a gold pair's answer here), else b."""
    a_on_left = not claim.swapped
    choice = "left" if a_on_left == right else "right"
    with transaction(engine) as session:
        return queue.submit_label(
            session=session,
            user_id=user_id,
            pair_id=claim.pair_id,
            shown_choice=choice,
            now=now,
        )


def _route(engine, pair_id) -> str:
    with transaction(engine, readonly=True) as session:
        return str(session.get(Pair, pair_id).route)


def test_imported_gold_pairs_are_queued_for_everyone_and_duplicates_skipped(engine):
    with transaction(engine) as session:
        assert gold.add_gold_pairs(session=session, items=_gold_items(3)) == (3, 0)
        # the same pairs again (one with its sides swapped) add nothing
        again = _gold_items(2) + [
            GoldIn(PromptIn(text="gold prompt 2"), "gold bad 2", "gold good 2", Choice.b)
        ]
        assert gold.add_gold_pairs(session=session, items=again) == (0, 3)
        pairs = list(session.exec(Pair.__table__.select()))
        answers = gold.gold_answers(session=session)
    assert {(p.route, p.strategy, p.status, p.overlap) for p in pairs} == {
        (Route.gold, "gold", PairStatus.queued, GOLD_OVERLAP)
    }
    assert set(answers.values()) == {Choice.a} and len(answers) == 3


def test_gold_pairs_come_at_the_gold_rate_once_each_and_never_for_want_of_work(engine):
    with transaction(engine) as session:
        ann, bob = make_user(session).id, make_user(session).id
        make_pairs(session, 20)
        gold.add_gold_pairs(session=session, items=_gold_items(30))
        # gold pairs are no work left
        assert queue.queue_stats(session=session, user_id=ann)["queued_short"] == 20

    def kinds(user_id, n, rate):
        out = []
        for _ in range(n):
            claim = _claim(engine, user_id, gold_rate=rate)
            if claim is None:
                break
            out.append((_route(engine, claim.pair_id), claim.pair_id))
            _label(engine, user_id, claim, right=True)
        return out

    seen = kinds(ann, 22, rate=0.25)
    routes = [route for route, _ in seen]
    # every fourth claim from the fourth, while preference pairs last (20 of them in 26 claims)
    assert [i for i, r in enumerate(routes) if r == "gold"] == [3, 7, 11, 15, 19]
    assert Counter(routes) == {"human": 17, "gold": 5}
    rest = kinds(ann, 30, rate=0.25)
    # the 3 preference pairs left and a gold pair when due; then none is due and there is no
    # other work: nothing, though 24 gold pairs are left for ann
    assert [r for r, _ in rest] == ["human", "gold", "human", "human"]
    # every preference pair was labeled once (overlap 1): bob has no work, and gets no gold
    # pair unless one is due; at rate 1 every claim is gold (a qualification round), each once
    assert _claim(engine, bob, gold_rate=0.5) is None
    bob_gold = kinds(bob, 40, rate=1.0)
    assert {route for route, _ in bob_gold} == {"gold"} and len(bob_gold) == 30
    ann_gold = [pid for route, pid in seen + rest if route == "gold"]
    assert len(ann_gold) == len(set(ann_gold)) == 6


def test_running_accuracy_flags_at_min_seen_and_the_flag_stays_until_lifted(engine):
    rule = GoldRule(min_accuracy=0.8, min_seen=5)
    assert rule.first_flag([True] * 4 + [False] * 4) == 6  # 4 of 5 is 0.8: no flag; 4 of 6 is
    assert rule.first_flag([True] * 8 + [False, True]) is None
    assert rule.flags(10, 8) is False and rule.flags(10, 7) is True  # 0.8 * 10 rounds to 8
    with transaction(engine) as session:
        ann, bob = make_user(session).id, make_user(session).id
        make_pairs(session, 40)
        gold.add_gold_pairs(session=session, items=_gold_items(20))

    def gold_labels(user_id, pattern):
        for right in pattern:
            claim = _claim(engine, user_id, gold_rate=1.0)
            assert _route(engine, claim.pair_id) == "gold"
            _label(engine, user_id, claim, right=right)

    gold_labels(ann, [True, False, False, True, True, True])  # 2 wrong of 5: flagged at 5
    gold_labels(bob, [True] * 6)
    with transaction(engine, readonly=True) as session:
        standing = {s.name: s for s in gold.gold_standing(session=session, rule=rule)}
    a = next(s for s in standing.values() if s.user_id == ann)
    b = next(s for s in standing.values() if s.user_id == bob)
    assert (a.seen, a.correct, a.accuracy, a.flagged_at) == (6, 4, 0.6667, 5)
    assert (b.seen, b.correct, b.flagged) == (6, 6, False)
    gold_labels(ann, [True] * 4)  # 8 of 10 now: still flagged, the flag is sticky
    with transaction(engine) as session:
        assert gold.flagged_annotators(session=session, rule=rule) == {ann}
        assert gold.flagged_annotators(session=session, rule=None) == set()
        gold.lift_flag(session=session, user_id=ann, now=utcnow() + timedelta(seconds=1))
        a = next(s for s in gold.gold_standing(session=session, rule=rule) if s.user_id == ann)
    # lifted: counted afresh from the lift, all-time figures kept
    assert (a.seen, a.correct, a.counted, a.flagged) == (10, 8, 0, False)
    later = utcnow() + timedelta(seconds=2)
    for right in [True, False, False, True, False]:
        claim = _claim(engine, ann, gold_rate=1.0)
        _label(engine, ann, claim, right=right, now=later)
    with transaction(engine, readonly=True) as session:
        a = next(s for s in gold.gold_standing(session=session, rule=rule) if s.user_id == ann)
        history = gold.gold_history(session=session, user_id=ann)
    assert (a.counted, a.counted_correct, a.flagged_at) == (5, 2, 5)
    assert history == [True, False, False, True, True, True, True, True, True, True] + [
        True,
        False,
        False,
        True,
        False,
    ]


def test_flagged_annotators_are_left_out_of_dpo_data_the_proxy_and_the_export(engine, tmp_path):
    """ann is flagged: her labels leave DPO's rows, the proxy's comparisons and the export while
    the rule is given, and count again without it. No gold label is ever a preference."""
    from labeling.export import ExportFilters, export_preferences, load_export
    from labeling.quality import quality_report

    rule = GoldRule(min_accuracy=0.8, min_seen=2)
    with transaction(engine) as session:
        ann, bob = make_user(session).id, make_user(session).id
        ann_pairs = {p.id for p in make_pairs(session, 3)}
        gold.add_gold_pairs(session=session, items=_gold_items(2))
    for _ in range(2):  # ann gets both gold pairs wrong
        _label(engine, ann, _claim(engine, ann, gold_rate=1.0), right=False)
    for _ in range(3):
        claim = _claim(engine, ann, gold_rate=0.0)
        assert claim.pair_id in ann_pairs
        _label(engine, ann, claim, right=True)
    with transaction(engine) as session:
        bob_pairs = {p.id for p in make_pairs(session, 2)}
    for _ in range(2):
        _label(engine, bob, _claim(engine, bob, gold_rate=0.0), right=True)
        _label(engine, bob, _claim(engine, bob, gold_rate=1.0), right=True)
    with transaction(engine, readonly=True) as session:
        assert gold.flagged_annotators(session=session, rule=rule) == {ann}
        filtered = {row.pair_id for row in iter_preferences(session=session, gold=rule)}
        everyone = {row.pair_id for row in iter_preferences(session=session)}
        proxy_filtered = {row.pair_id for row in proxy_labels(session=session, gold=rule)}
        proxy_all = [row.pair_id for row in proxy_labels(session=session)]
        counts = crud.label_counts(session=session)
    assert filtered == proxy_filtered == bob_pairs
    assert everyone == set(proxy_all) == ann_pairs | bob_pairs  # no gold pair among them
    assert counts == {"human": 5}  # the 4 gold labels are no preference labels
    assert quality_report(engine=engine)["human_labels"] == 5

    out = export_preferences(
        engine=engine,
        out=tmp_path / "prefs.jsonl",
        format="jsonl",
        filters=ExportFilters(gold=rule),
    )
    assert set(load_export(out.path, "jsonl")["pair_id"]) == bob_pairs
    assert out.filters["gold_filter"] == {"min_gold_accuracy": 0.8, "min_gold_seen": 2}
    out = export_preferences(engine=engine, out=tmp_path / "all.jsonl", format="jsonl")
    assert set(load_export(out.path, "jsonl")["pair_id"]) == ann_pairs | bob_pairs


def test_a_marked_pair_becomes_gold_for_the_others_and_unmarking_puts_it_back(engine):
    with transaction(engine) as session:
        ann, bob = make_user(session).id, make_user(session).id
        pair_id = make_pairs(session, 1)[0].id
    _label(engine, ann, _claim(engine, ann), right=False)  # before it is gold: never counted
    with transaction(engine, readonly=True) as session:
        assert {row.pair_id for row in iter_preferences(session=session)} == {pair_id}
    with transaction(engine) as session:
        gold.mark_gold(session=session, pair_id=pair_id, answer="a", user_id=None)
        with pytest.raises(crud.Conflict, match="gold pair already"):
            gold.mark_gold(session=session, pair_id=pair_id, answer="b", user_id=None)
        assert list(iter_preferences(session=session)) == []  # its labels left the preferences
    assert _claim(engine, ann, gold_rate=1.0) is None  # ann had it
    claim = _claim(engine, bob, gold_rate=1.0)
    assert claim.pair_id == pair_id
    _label(engine, bob, claim, right=True)
    with transaction(engine, readonly=True) as session:
        standing = {s.user_id: s for s in gold.gold_standing(session=session, rule=GoldRule(1, 1))}
        pair = session.get(Pair, pair_id)
    assert set(standing) == {bob} and standing[bob].correct == 1
    assert (pair.route, pair.status, pair.n_labels) == (Route.gold, PairStatus.queued, 2)
    with transaction(engine) as session:
        gold.remove_gold(session=session, pair_id=pair_id)
        pair = session.get(Pair, pair_id)
        assert (pair.route, pair.status, pair.overlap) == (Route.human, PairStatus.done, 1)
        assert gold.gold_standing(session=session, rule=GoldRule(1, 1)) == []
        assert {row.pair_id for row in iter_preferences(session=session)} == set()  # a draw
        with pytest.raises(crud.NotFound):
            gold.remove_gold(session=session, pair_id=pair_id)


def test_only_preference_pairs_become_gold(engine):
    from storage.models import PairStrategy

    with transaction(engine) as session:
        vote = make_pairs(session, 1, route=Route.eval, strategy=PairStrategy.eval)[0].id
        gone = make_pairs(session, 1, status=PairStatus.discarded)[0].id
        with pytest.raises(crud.Conflict, match="evaluation pair"):
            gold.mark_gold(session=session, pair_id=vote, answer="a", user_id=None)
        with pytest.raises(crud.Conflict, match="withdrawn"):
            gold.mark_gold(session=session, pair_id=gone, answer="a", user_id=None)
        with pytest.raises(crud.NotFound):
            gold.mark_gold(session=session, pair_id=10**6, answer="a", user_id=None)
        gold.add_gold_pairs(session=session, items=_gold_items(1))
        imported = next(iter(gold.gold_answers(session=session)))
        gold.remove_gold(session=session, pair_id=imported)  # an imported one is withdrawn
        assert session.get(Pair, imported).status == PairStatus.discarded


def test_a_flagged_annotators_pairs_go_back_to_the_queue_and_leave_the_quota(engine):
    """ann is flagged: the pairs she labeled are queued for one more label each (once), her
    labels leave the iteration's quota count, and bob's labels on those pairs count."""
    from training.iteration import human_labels, quota_reached

    rule = GoldRule(min_accuracy=0.8, min_seen=2)
    with transaction(engine) as session:
        ann, bob = make_user(session).id, make_user(session).id
        iteration = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=3, human_budget=3
        )
        iteration_id = iteration.id
        theirs = [p.id for p in make_pairs(session, 3, iteration_id=iteration_id)]
        gold.add_gold_pairs(session=session, items=_gold_items(2))
    for _ in range(3):
        _label(engine, ann, _claim(engine, ann), right=True)
    with transaction(engine) as session:
        crud.set_iteration_state(session=session, iteration_id=iteration_id, state="labeling")
    assert quota_reached(engine=engine, gold=rule) is not None  # not flagged yet
    for _ in range(2):
        _label(engine, ann, _claim(engine, ann, gold_rate=1.0), right=False)
    assert human_labels(engine=engine, iteration_id=iteration_id) == 3
    assert human_labels(engine=engine, iteration_id=iteration_id, gold=rule) == 0
    assert quota_reached(engine=engine, gold=rule) is None  # and her pairs went back
    with transaction(engine) as session:
        pairs = [session.get(Pair, pid) for pid in theirs]
        assert {(p.status, p.overlap, p.n_labels) for p in pairs} == {(PairStatus.queued, 2, 1)}
        assert gold.requeue_flagged(session=session, rule=rule) == 0  # once only
    relabeled = []
    for _ in range(3):
        claim = _claim(engine, bob)
        relabeled.append(claim.pair_id)
        _label(engine, bob, claim, right=True)
    assert sorted(relabeled) == theirs
    assert quota_reached(engine=engine, gold=rule) is not None
    with transaction(engine, readonly=True) as session:
        assert {r.pair_id for r in iter_preferences(session=session, gold=rule)} == set(theirs)
