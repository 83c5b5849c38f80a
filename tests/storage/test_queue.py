"""The annotation queue on SQLite and PostgreSQL: contracts, then many threads at once."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from storage import queue
from storage.db import transaction
from storage.models import (
    Assignment,
    AssignmentStatus,
    Choice,
    Label,
    Pair,
    PairStatus,
    Route,
    Suggestion,
    utcnow,
)
from tests.factories import make_pairs, make_user


def _setup(engine, n_pairs=3, n_users=2, **pair_fields):
    with transaction(engine) as session:
        users = [make_user(session).id for _ in range(n_users)]
        pairs = [p.id for p in make_pairs(session, n_pairs, **pair_fields)]
    return users, pairs


def claim_next(session, user_id, **kwargs):
    kwargs.setdefault("lease_seconds", 600)
    return queue.claim_next_pair(session=session, user_id=user_id, **kwargs)


def claim(engine, user_id, **kwargs):
    with transaction(engine) as session:
        return claim_next(session, user_id, **kwargs)


def submit(engine, user_id, pair_id, choice="left", **kwargs):
    with transaction(engine) as session:
        return queue.submit_label(
            session=session, user_id=user_id, pair_id=pair_id, shown_choice=choice, **kwargs
        )


@pytest.mark.postgres
def test_a_postgres_claim_runs_on_generic_plans_for_its_own_transaction_alone(postgres_engine):
    (user, _), _ = _setup(postgres_engine)
    mode = sa.text("SHOW plan_cache_mode")
    with transaction(postgres_engine) as session:
        assert session.connection().execute(mode).scalar_one() == "auto"
        assert claim_next(session, user) is not None
        assert session.connection().execute(mode).scalar_one() == "force_generic_plan"
    with transaction(postgres_engine) as session:  # the pool's same connection, reset
        assert session.connection().execute(mode).scalar_one() == "auto"


def test_claim_shows_the_pair_and_reload_returns_the_same_claim(engine):
    (u1, _), pair_ids = _setup(engine)
    first = claim(engine, u1, rng=random.Random(0))
    assert first.pair_id in pair_ids
    assert first.left.startswith("reply") and first.right.startswith("reply")
    assert first.left != first.right and first.prompt.startswith("prompt")
    assert first.expires_at - first.claimed_at == timedelta(seconds=600)
    again = claim(engine, u1)
    assert again == first
    with transaction(engine, readonly=True) as session:
        assert session.exec(sa.select(sa.func.count(Assignment.id))).scalar_one() == 1


def test_submit_translates_the_shown_order_back_to_a_and_b(engine):
    users, pair_ids = _setup(engine, n_pairs=40, n_users=1)
    rng = random.Random(1)
    seen_swapped = set()
    for _ in range(40):
        c = claim(engine, users[0], rng=rng)
        label = submit(engine, users[0], c.pair_id, "left")
        with transaction(engine, readonly=True) as session:
            pair = session.get(Pair, c.pair_id)
            from storage.models import Response

            chosen = pair.response_a_id if label.choice == Choice.a else pair.response_b_id
            assert session.get(Response, chosen).text == c.left
            assert label.swapped == c.swapped
            assert (pair.status, pair.n_labels) == (PairStatus.done, 1)
        seen_swapped.add(c.swapped)
    assert seen_swapped == {True, False}
    assert claim(engine, users[0]) is None


def test_suggestion_is_shown_in_display_order(engine):
    (u1, _), (pair_id,) = _setup(engine, n_pairs=1)
    with transaction(engine) as session:
        session.add(Suggestion(pair_id=pair_id, p_a=0.9, uncertainty=0.05, agent="proxy:v1"))
    c = claim(engine, u1, rng=random.Random(3))
    expected = 0.1 if c.swapped else 0.9
    assert c.suggestion.p_left == pytest.approx(expected)
    assert c.suggestion.agent == "proxy:v1"


def test_submit_is_idempotent_and_refused_without_a_claim(engine):
    (u1, u2), pair_ids = _setup(engine)
    c = claim(engine, u1)
    first = submit(engine, u1, c.pair_id, "right", seconds=3.0)
    second = submit(engine, u1, c.pair_id, "left", seconds=9.0)
    assert (second.id, second.choice, second.seconds) == (first.id, first.choice, 3.0)
    with pytest.raises(queue.NotAssigned, match="no claim"):
        submit(engine, u2, c.pair_id)
    with pytest.raises(ValueError, match="'middle'"):
        submit(engine, u1, pair_ids[1], "middle")
    with transaction(engine, readonly=True) as session:
        assert session.get(Pair, c.pair_id).n_labels == 1
        assert session.exec(sa.select(sa.func.count(Label.id))).scalar_one() == 1


def test_overlap_and_a_user_never_sees_a_pair_twice(engine):
    users, (pair_id,) = _setup(engine, n_pairs=1, n_users=4, overlap=2)
    c1, c2 = claim(engine, users[0]), claim(engine, users[1])
    assert c1.pair_id == c2.pair_id == pair_id
    assert claim(engine, users[2]) is None  # two leases fill an overlap of 2
    submit(engine, users[0], pair_id)
    assert claim(engine, users[0]) is None  # labeled it already
    submit(engine, users[1], pair_id, "tie")
    with transaction(engine, readonly=True) as session:
        pair = session.get(Pair, pair_id)
        assert (pair.n_labels, pair.status) == (2, PairStatus.done)
    assert claim(engine, users[3]) is None


def test_expired_lease_goes_back_to_the_queue(engine):
    (u1, u2), (pair_id,) = _setup(engine, n_pairs=1)
    claim(engine, u1, lease_seconds=60)
    assert claim(engine, u2) is None
    later = utcnow() + timedelta(seconds=61)
    c = claim(engine, u2, now=later)
    assert c is not None and c.pair_id == pair_id
    # u1's late submit finds the slot taken
    with pytest.raises(queue.LeaseExpired):
        submit(engine, u1, pair_id, now=later)
    submit(engine, u2, pair_id, now=later)
    with transaction(engine) as session:
        assert queue.release_expired(session=session, now=later) == 1
        statuses = sorted(session.exec(sa.select(Assignment.status)).scalars())
    assert statuses == [AssignmentStatus.expired, AssignmentStatus.submitted]


def test_late_submit_is_taken_while_the_slot_is_free(engine):
    (u1, _), (pair_id,) = _setup(engine, n_pairs=1)
    claim(engine, u1, lease_seconds=60)
    label = submit(engine, u1, pair_id, now=utcnow() + timedelta(seconds=120))
    assert label.user_id == u1


def test_skip_hands_the_pair_to_others(engine):
    (u1, u2), pair_ids = _setup(engine, n_pairs=1)
    c = claim(engine, u1)
    with transaction(engine) as session:
        queue.skip_pair(session=session, user_id=u1, pair_id=c.pair_id)
    assert claim(engine, u1) is None
    assert claim(engine, u2).pair_id == c.pair_id
    with pytest.raises(queue.Conflict, match="skipped"):
        submit(engine, u1, c.pair_id)


def test_only_queued_human_routes_are_claimable(engine):
    with transaction(engine) as session:
        user = make_user(session).id
        make_pairs(session, 1, route=Route.proxy, status=PairStatus.done)
        make_pairs(session, 1, status=PairStatus.discarded)
        (audit,) = make_pairs(session, 1, route=Route.audit)
        audit_id = audit.id
    with transaction(engine, readonly=True) as session:
        assert queue.queue_stats(session=session, user_id=user) == {
            "labeled_today": 0,
            "queue_left": 1,
            "queued_short": 1,  # the audit pair alone: the others are done or discarded
        }
    c = claim(engine, user)
    assert c.pair_id == audit_id
    submit(engine, user, audit_id)
    with transaction(engine, readonly=True) as session:
        assert queue.queue_stats(session=session, user_id=user) == {
            "labeled_today": 1,
            "queue_left": 0,
            "queued_short": 0,
        }


def _stress(engine, *, threads: int, cycles: int, overlap: int):
    n_pairs = threads * cycles // overlap + threads  # spare pairs: no one runs dry early
    users, _ = _setup(engine, n_pairs=n_pairs, n_users=threads, overlap=overlap)
    returned: list[tuple[int, int, int]] = []  # (label id, pair, user) of every submit
    errors: list[BaseException] = []
    claimed: list[int] = []  # pairs claimed, one entry per cycle
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(user_id: int, seed: int) -> None:
        rng = random.Random(seed)
        try:
            barrier.wait()
            for _ in range(cycles):
                c = claim(engine, user_id, rng=rng)
                if c is None:  # only pairs this user has labeled have slots left
                    break
                with lock:
                    claimed.append(c.pair_id)
                choice = rng.choice(queue.SHOWN_CHOICES)
                n_submits = 2 if rng.random() < 0.2 else 1  # a double click
                for _ in range(n_submits):
                    label = submit(engine, user_id, c.pair_id, choice)
                    with lock:
                        returned.append((label.id, c.pair_id, user_id))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(user_id, i)) for i, user_id in enumerate(users)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []

    with transaction(engine, readonly=True) as session:
        labels = session.exec(sa.select(Label.id, Label.pair_id, Label.user_id)).all()
        pairs = session.exec(sa.select(Pair.id, Pair.n_labels, Pair.overlap, Pair.status)).all()
    stored = {row.id: (row.pair_id, row.user_id) for row in labels}
    # zero lost submits: every label a submit returned is stored, for that pair and user
    assert all(stored.get(lid) == (pid, uid) for lid, pid, uid in returned)
    # zero duplicates: a double click returned the same label; one label per (pair, user)
    per_user = Counter((pid, uid) for pid, uid in stored.values())
    assert max(per_user.values()) == 1
    assert len({lid for lid, _, _ in returned}) == len(stored) == len(claimed)
    assert len(claimed) >= 0.95 * threads * cycles
    # no pair over its overlap, and the counters agree with the rows
    counts = Counter(pid for pid, _ in stored.values())
    for pair in pairs:
        assert pair.n_labels == counts[pair.id] <= pair.overlap
        assert (pair.status == PairStatus.done) == (pair.n_labels == pair.overlap)


@pytest.mark.parametrize("overlap", [1, 3])
def test_many_threads_claim_and_submit(engine, overlap):
    _stress(engine, threads=8, cycles=25, overlap=overlap)


@pytest.mark.slow
def test_32_threads_200_cycles(engine):
    _stress(engine, threads=32, cycles=200, overlap=3)


def test_queue_stats_with_a_count_given_subtracts_what_this_user_cannot_get(engine):
    with transaction(engine) as session:
        ann, bob = make_user(session).id, make_user(session).id
        make_pairs(session, 3)
    held = claim(engine, bob)  # a live lease fills that pair for ann
    with transaction(engine, readonly=True) as session:
        assert queue.queue_stats(session=session, user_id=ann)["queued_short"] == 3
        exact = queue.queue_stats(session=session, user_id=ann)
        given = queue.queue_stats(session=session, user_id=ann, queued_short=3)
        stale = queue.queue_stats(session=session, user_id=ann, queued_short=0)
        mine = queue.queue_stats(session=session, user_id=bob, queued_short=3)
        told = queue.queue_stats(session=session, user_id=bob, queued_short=3, holds_pair=True)
    assert exact == given == {"labeled_today": 0, "queue_left": 2, "queued_short": 3}
    assert told == mine  # the caller that has just claimed may say so instead of a query
    assert stale["queue_left"] == 0  # an old, smaller count never gives a negative
    assert held is not None and mine["queue_left"] == 3  # bob's own held pair counts for him


def _label_next(engine, user_id, pair_id, choice, labeling):
    with transaction(engine) as session:
        return queue.label_and_claim_next(
            session=session,
            user_id=user_id,
            pair_id=pair_id,
            shown_choice=choice,
            labeling=labeling,
        )


def test_label_and_claim_next_labels_then_claims_unless_paused_or_not_asked(engine):
    from storage.settings import LabelingSettings

    (u1, _), pair_ids = _setup(engine, n_pairs=3)
    open_, paused = LabelingSettings(lease_seconds=90), LabelingSettings(paused=True)
    first = claim(engine, u1)
    label, following = _label_next(engine, u1, first.pair_id, "tie", open_)
    assert (label.pair_id, label.choice) == (first.pair_id, Choice.tie)
    assert following.pair_id in pair_ids and following.pair_id != first.pair_id
    assert following.expires_at - following.claimed_at == timedelta(seconds=90)

    label, none = _label_next(engine, u1, following.pair_id, "left", paused)
    assert label.pair_id == following.pair_id and none is None
    third = claim(engine, u1)
    label, none = _label_next(engine, u1, third.pair_id, "right", None)  # next not asked
    assert label.pair_id == third.pair_id and none is None
    with transaction(engine, readonly=True) as session:
        assert session.exec(sa.select(sa.func.count(Label.id))).scalar_one() == 3
        assert queue.claim_for_labeling(session=session, user_id=u1, labeling=paused) is None


def test_the_queue_counter_and_the_claim_agree_on_what_is_claimable(engine):
    """queue_left is the number of pairs the user gets by claiming until nothing is left."""
    with transaction(engine) as session:
        ann, bob, eve = (make_user(session).id for _ in range(3))
        ids = [p.id for p in make_pairs(session, 8, overlap=2)]
        make_pairs(session, 1, route=Route.proxy)  # not for humans
    now = utcnow()
    minute = timedelta(seconds=60)
    with transaction(engine) as session:
        for user in (bob, eve):  # two live leases fill ids[0]
            session.add(Assignment(pair_id=ids[0], user_id=user, expires_at=now + minute))
        # bob's lease on ids[1] ran out: its slot is free again
        session.add(Assignment(pair_id=ids[1], user_id=bob, expires_at=now - minute))
        # ann passed on ids[2] and labeled ids[3]
        skipped, submitted = AssignmentStatus.skipped, AssignmentStatus.submitted
        session.add(Assignment(pair_id=ids[2], user_id=ann, status=skipped, expires_at=now))
        session.add(Assignment(pair_id=ids[3], user_id=ann, status=submitted, expires_at=now))
        pair = session.get(Pair, ids[3])
        pair.n_labels = 1
        session.add(pair)
    with transaction(engine, readonly=True) as session:
        left = queue.queue_stats(session=session, user_id=ann, now=now)["queue_left"]
    got = []
    while (c := claim(engine, ann, now=now)) is not None:
        got.append(c.pair_id)
        with transaction(engine) as session:
            queue.skip_pair(session=session, user_id=ann, pair_id=c.pair_id)
    assert sorted(got) == [ids[1], *ids[4:]]
    assert left == len(got) == 5


def test_a_submit_is_two_round_trips_on_postgresql(engine):
    """Every statement of a click is a round trip to a PostgreSQL server: a submit reads its
    claim, pair and label in one and writes the label, the claim and the count in another."""
    (u1, _), _ = _setup(engine)
    c = claim(engine, u1)
    statements = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    label = submit(engine, u1, c.pair_id, "left")
    work = [s for s in statements if not s.startswith("BEGIN")]  # SQLite's BEGIN IMMEDIATE
    postgres = engine.dialect.name == "postgresql"
    assert len(work) == (2 if postgres else 4), work
    with transaction(engine, readonly=True) as session:
        pair = session.get(Pair, c.pair_id)
        assignment = session.exec(
            sa.select(Assignment).where(Assignment.pair_id == c.pair_id)
        ).scalar_one()
        stored = session.get(Label, label.id)
    assert (pair.n_labels, pair.status, assignment.status) == (1, PairStatus.done, "submitted")
    assert (stored.user_id, stored.choice) == (u1, label.choice)


# evaluation pairs: a queue of their own, mixed in at eval.human_share


def _claim_kinds(engine, user_id, n, share):
    """Claim and label `n` pairs in turn; the route of each ("eval" or "human")."""
    kinds = []
    for _ in range(n):
        c = claim(engine, user_id, eval_share=share)
        if c is None:
            break
        with transaction(engine, readonly=True) as session:
            kinds.append(str(session.get(Pair, c.pair_id).route))
        submit(engine, user_id, c.pair_id, "left")
    return kinds


def test_evaluation_pairs_take_their_share_of_claims_and_neither_kind_starves(engine):
    from storage.models import PairStrategy

    with transaction(engine) as session:
        ann = make_user(session).id
        make_pairs(session, 30)
        make_pairs(session, 30, route=Route.eval, strategy=PairStrategy.eval)
    kinds = _claim_kinds(engine, ann, 40, share=0.25)
    # every fourth claim, from the fourth on: exactly the share, never bunched up
    assert [i for i, kind in enumerate(kinds) if kind == "eval"] == list(range(3, 40, 4))
    # the 30 preference pairs run out at claim 40: then only evaluation pairs are left, and
    # they keep coming whatever the share says
    rest = _claim_kinds(engine, ann, 100, share=0.25)
    assert Counter(kinds + rest) == {"human": 30, "eval": 30}
    assert rest == ["eval"] * 20


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_share_zero_waits_for_the_preference_queue_and_one_puts_evaluation_first(engine, share):
    from storage.models import PairStrategy

    with transaction(engine) as session:
        ann = make_user(session).id
        make_pairs(session, 3)
        make_pairs(session, 2, route=Route.eval, strategy=PairStrategy.eval)
        make_pairs(session, 1, route=Route.proxy)  # for no one
    kinds = _claim_kinds(engine, ann, 10, share=share)
    first, then = ("human", "eval") if share == 0.0 else ("eval", "human")
    assert kinds == [first] * kinds.count(first) + [then] * kinds.count(then)
    assert Counter(kinds) == {"human": 3, "eval": 2}


def test_the_share_counts_each_annotators_own_claims(engine):
    from storage.models import PairStrategy

    with transaction(engine) as session:
        ann, bob = make_user(session).id, make_user(session).id
        make_pairs(session, 20)
        make_pairs(session, 20, route=Route.eval, strategy=PairStrategy.eval)
    assert _claim_kinds(engine, ann, 6, share=0.5) == ["human", "eval"] * 3
    # bob's first claim is a preference pair, whatever ann did
    assert _claim_kinds(engine, bob, 2, share=0.5) == ["human", "eval"]


def test_the_counter_counts_evaluation_pairs_too(engine):
    from storage.models import PairStrategy

    with transaction(engine) as session:
        ann = make_user(session).id
        make_pairs(session, 2)
        make_pairs(session, 3, route=Route.eval, strategy=PairStrategy.eval, overlap=2)
    with transaction(engine, readonly=True) as session:
        assert queue.queue_stats(session=session, user_id=ann)["queued_short"] == 5
        assert queue.queue_stats(session=session, user_id=ann)["queue_left"] == 5
    assert len(_claim_kinds(engine, ann, 10, share=0.5)) == 5


def test_a_claim_is_five_round_trips_on_postgresql(engine):
    """A claim on PostgreSQL: the user's lock, the held lease (lapsed ones tidied in the same
    statement), the probe for evaluation pairs, the next free pair locked, and the claim with
    the pair as shown. SQLite runs its own plan (one INSERT ... SELECT)."""
    (u1, _), pair_ids = _setup(engine)
    statements = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    shown = claim(engine, u1)
    work = [s for s in statements if not s.startswith("BEGIN")]
    if engine.dialect.name == "postgresql":
        assert len(work) == 5, work
        assert not any("SET user_id" in s or "SET pair_id" in s for s in work), work
    assert shown.pair_id in pair_ids and shown.left.startswith("reply")
    assert claim(engine, u1) == shown  # the held lease comes back


def test_a_users_lapsed_leases_are_found_among_the_live_ones(tmp_path):
    """The claim's expiry of the user's lapsed leases reads ix_assignment_user_live (the live
    leases, by user), not ix_assignment_user_id: that walked every claim the user ever made, a
    click's cost growing with the annotator's history. (SQLite's plan: it has no statistics to
    change its mind; PostgreSQL picks the index from its own, on a table of real size.)"""
    from datetime import UTC, datetime

    from storage.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    upgrade(engine)
    statement = queue._expiring(datetime.now(UTC), 1)
    sql = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    with engine.connect() as connection:
        plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    assert plan == [
        "SEARCH assignment USING INDEX ix_assignment_user_live (user_id=? AND expires_at<?)"
    ]
