"""Label aggregation into preference rows, and streaming, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from storage import crud
from storage.db import transaction
from storage.models import (
    Choice,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    PairStrategy,
    Response,
    Split,
    Suggestion,
)
from storage.preferences import decide, iter_preferences
from tests.factories import make_pairs, make_policy, make_prompts, make_user


def label(session, pair, choice, *, user=None, source=LabelSource.human):
    session.add(
        Label(
            pair_id=pair.id,
            user_id=user.id if user else None,
            source=source,
            choice=Choice(choice),
        )
    )
    session.flush()


def texts(session, pair):
    a = session.get(Response, pair.response_a_id).text
    b = session.get(Response, pair.response_b_id).text
    return a, b


def rows(engine, **filters):
    with transaction(engine, readonly=True) as session:
        return list(iter_preferences(session=session, **filters))


@pytest.mark.parametrize(
    ("choices", "expected"),
    [
        (["a"], ("a", 1.0)),
        (["b", "b", "a"], ("b", 2 / 3)),
        (["a", "b"], None),  # a/b draw
        (["tie", "tie", "a"], None),
        (["both_bad"], None),
        (["a", "tie"], None),  # no strict plurality
        (["a", "a", "tie", "b"], ("a", 0.5)),
        ([], None),
    ],
)
def test_decide_takes_the_strict_plurality(choices, expected):
    result = decide(choices)
    if expected is None:
        assert result is None
    else:
        assert result[0] == expected[0] and result[1] == pytest.approx(expected[1])


def test_majority_decides_chosen_and_rejected(engine):
    with transaction(engine) as session:
        policy = make_policy(session, version=3)
        alice, bob, carol = (make_user(session, name=n) for n in ("alice", "bob", "carol"))
        p1, p2, p3, p4 = make_pairs(session, 4)
        session.execute(
            sa.update(Response)
            .where(Response.id.in_([p1.response_a_id, p1.response_b_id]))
            .values(policy_id=policy.id)
        )
        label(session, p1, "b", user=alice)
        label(session, p1, "b", user=bob)
        label(session, p1, "a", user=carol)
        session.add(Suggestion(pair_id=p1.id, p_a=0.9, agent="proxy:v1"))
        session.add(Suggestion(pair_id=p1.id, p_a=0.3, agent="proxy:v2"))  # the latest
        label(session, p2, "tie", user=alice)  # tie: left out
        label(session, p3, "a", user=alice)
        label(session, p3, "b", user=bob)  # draw: left out
        label(session, p4, "a", user=alice)
        p1_texts, p4_texts = texts(session, p1), texts(session, p4)
        ids = p1.id, p4.id

    got = rows(engine)
    assert [r.pair_id for r in got] == list(ids)
    first, second = got
    assert (first.chosen, first.rejected) == (p1_texts[1], p1_texts[0])
    assert first.agreement == pytest.approx(2 / 3)
    assert first.annotators == ["alice", "bob", "carol"]
    assert first.proxy_p == pytest.approx(0.7)  # 1 - P(a > b) of the latest suggestion
    assert (first.source, first.policy_version, first.iteration) == ("human", 3, None)
    assert first.prompt.startswith("prompt ") and first.messages is None
    assert (second.chosen, second.rejected) == p4_texts
    assert second.proxy_p is None and second.policy_version is None


def test_human_labels_overrule_the_proxy(engine):
    with transaction(engine) as session:
        alice = make_user(session)
        audited, proxied = make_pairs(session, 2)
        label(session, audited, "a", source=LabelSource.proxy)
        label(session, audited, "b", user=alice)
        label(session, proxied, "a", source=LabelSource.proxy)
        audited_b, proxied_a = texts(session, audited)[1], texts(session, proxied)[0]

    both = rows(engine)
    assert [(r.source, r.chosen) for r in both] == [("human", audited_b), ("proxy", proxied_a)]
    only_proxy = rows(engine, sources=["proxy"])
    assert [r.source for r in only_proxy] == ["proxy", "proxy"]
    assert only_proxy[0].chosen == texts_of(engine, only_proxy[0].pair_id)[0]
    assert [r.source for r in rows(engine, sources=["human"])] == ["human"]


def texts_of(engine, pair_id):
    with transaction(engine, readonly=True) as session:
        return texts(session, session.get(Pair, pair_id))


def test_filters_select_what_they_say(engine):
    with transaction(engine) as session:
        alice, bob = make_user(session, name="alice"), make_user(session, name="bob")
        it0 = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=1, human_budget=1
        )
        crud.set_iteration_state(session=session, iteration_id=it0.id, state="failed")
        it1 = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=1, human_budget=1
        )
        (in0,) = make_pairs(session, 1, iteration_id=it0.id)
        in1, split_pair = make_pairs(session, 2, iteration_id=it1.id)
        (discarded,) = make_pairs(session, 1, iteration_id=it1.id, status=PairStatus.discarded)
        (seed,) = make_pairs(session, 1, strategy=PairStrategy.seed, status=PairStatus.done)
        (eval_prompt,) = make_prompts(session, 1, split=Split.eval)
        session.get(Pair, split_pair.id).prompt_id = eval_prompt
        session.execute(
            sa.update(Response)
            .where(Response.id.in_([split_pair.response_a_id, split_pair.response_b_id]))
            .values(prompt_id=eval_prompt)
        )
        label(session, in0, "a", user=alice)
        label(session, in1, "a", user=alice)
        label(session, in1, "a", user=bob)
        label(session, split_pair, "b", user=bob)
        label(session, split_pair, "a", user=alice)
        label(session, split_pair, "b", source=LabelSource.proxy)
        label(session, discarded, "a", user=alice)
        label(session, seed, "b", source=LabelSource.seed)
        ids = {"in0": in0.id, "in1": in1.id, "split": split_pair.id, "seed": seed.id}

    def pair_ids(**filters):
        return [r.pair_id for r in rows(engine, **filters)]

    # split_pair: alice a vs bob b is a human draw, so the human source decides nothing
    assert pair_ids() == [ids["in0"], ids["in1"], ids["seed"]]
    assert pair_ids(iterations=[0]) == [ids["in0"]]
    assert pair_ids(iterations=[1]) == [ids["in1"]]
    assert pair_ids(iterations=[0, 1]) == [ids["in0"], ids["in1"]]
    assert pair_ids(iterations=[0], with_seed=True) == [ids["in0"], ids["seed"]]
    assert pair_ids(sources=["seed"]) == [ids["seed"]]
    assert pair_ids(sources=["proxy"]) == [ids["split"]]
    assert pair_ids(sources=["proxy"], split="train") == []
    assert pair_ids(split=Split.eval, annotators=["bob"]) == [ids["split"]]
    assert pair_ids(annotators=["bob"]) == [ids["in1"], ids["split"]]
    assert pair_ids(annotators=["alice"]) == [ids["in0"], ids["in1"], ids["split"]]
    assert pair_ids(annotators=["nobody"]) == []
    assert pair_ids(annotators=["alice"], sources=["proxy"]) == []
    seed_row = rows(engine, sources=["seed"])[0]
    assert (seed_row.iteration, seed_row.strategy, seed_row.annotators) == (None, "seed", [])

    with transaction(engine) as session:
        # a dissent makes in1 2:1, agreement 2/3
        carol = make_user(session, name="carol")
        label(session, session.get(Pair, ids["in1"]), "b", user=carol)
    assert pair_ids(min_agreement=0.6, iterations=[1]) == [ids["in1"]]
    assert pair_ids(min_agreement=0.7, iterations=[1]) == []
    assert pair_ids(min_agreement=1.0) == [ids["in0"], ids["seed"]]


def test_streams_in_keyset_pages(engine):
    with transaction(engine) as session:
        user = make_user(session)
        pairs = make_pairs(session, 6)
        for i, pair in enumerate(pairs):
            if i != 3:  # one unlabeled pair in the middle
                label(session, pair, "a", user=user)
        expected = [p.id for i, p in enumerate(pairs) if i != 3]

    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        if "FROM pair" in statement and "LIMIT" in statement:
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with transaction(engine, readonly=True) as session:
            stream = iter_preferences(session=session, batch_size=2)
            first = next(stream)
            assert len(statements) == 1  # lazily: one page read for the first row
            rest = list(stream)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert [r.pair_id for r in [first, *rest]] == expected
    assert len(statements) == 3  # 5 labeled pairs, 2 per page, the third page short


def test_bad_arguments_raise(sqlite_engine):
    with transaction(sqlite_engine, readonly=True) as session:
        with pytest.raises(ValueError):
            list(iter_preferences(session=session, sources=["gold"]))
        with pytest.raises(ValueError):
            list(iter_preferences(session=session, sources=[]))
        with pytest.raises(ValueError):
            list(iter_preferences(session=session, batch_size=0))


def test_seed_preferences_are_stored_as_decided_pairs(engine):
    from storage.crud import PromptIn
    from storage.preferences import SeedPreferenceIn, add_seed_preferences

    chat = [{"role": "user", "content": "hi"}]
    items = [
        SeedPreferenceIn(PromptIn(text="q1"), chosen="good", rejected="bad"),
        SeedPreferenceIn(PromptIn(text="hi", messages=chat), chosen="hello", rejected="go"),
        SeedPreferenceIn(PromptIn(text="q1"), chosen="good", rejected="bad"),  # repeated
        SeedPreferenceIn(PromptIn(text="q1"), chosen="fine", rejected="bad"),
    ]
    with transaction(engine) as session:
        assert add_seed_preferences(session=session, items=items, chunk=2) == (3, 1)
    with transaction(engine) as session:
        assert add_seed_preferences(session=session, items=items[:2]) == (0, 2)
    got = rows(engine)
    assert [(r.prompt, r.chosen, r.rejected) for r in got] == [
        ("q1", "good", "bad"),
        ("hi", "hello", "go"),
        ("q1", "fine", "bad"),
    ]
    assert got[1].messages == chat
    assert {(r.source, r.strategy, r.iteration, r.policy_version) for r in got} == {
        ("seed", "seed", None, None)
    }
    with transaction(engine, readonly=True) as session:
        counts = crud.table_counts(session=session)
    assert (counts["prompt"], counts["response"], counts["pair"], counts["label"]) == (2, 6, 3, 3)
    assert rows(engine, iterations=[0]) == []


def test_a_seed_import_that_fails_midway_leaves_nothing(engine):
    from storage.crud import PromptIn
    from storage.preferences import SeedPreferenceIn, add_seed_preferences

    items = [SeedPreferenceIn(PromptIn(text=f"q{i}"), f"good {i}", f"bad {i}") for i in range(5)]

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), transaction(engine) as session:
        real_add_all, calls = session.add_all, []

        def add_all(rows):
            calls.append(len(rows))
            if len(calls) == 4:  # prompts, responses, pairs flushed; now the labels
                raise Boom
            real_add_all(rows)

        session.add_all = add_all
        add_seed_preferences(session=session, items=items, chunk=2)
    with transaction(engine, readonly=True) as session:
        counts = crud.table_counts(session=session)
    assert (counts["prompt"], counts["response"], counts["pair"], counts["label"]) == (0, 0, 0, 0)


def test_the_proxy_reads_each_label_where_training_reads_the_decided_pair(engine):
    from storage.preferences import PROXY_SOURCES, proxy_labels

    assert (LabelSource.review, LabelSource.human, LabelSource.seed) == PROXY_SOURCES
    with transaction(engine) as session:
        ann, bob = make_user(session), make_user(session)
        split, tie, audited, withdrawn = make_pairs(session, 4, status=PairStatus.done)
        label(session, split, "a", user=ann)
        label(session, split, "b", user=bob)  # an a/b draw: no row, two comparisons
        label(session, tie, "tie", user=ann)
        label(session, audited, "a", source=LabelSource.proxy)  # never the proxy's own
        label(session, audited, "b", user=bob)
        label(session, withdrawn, "a", user=ann)
        withdrawn.status = PairStatus.discarded
        session.add(withdrawn)
    assert [(r.pair_id, r.source) for r in rows(engine)] == [(audited.id, "human")]
    with transaction(engine, readonly=True) as session:
        got = [(x.pair_id, x.source, x.choice) for x in proxy_labels(session=session)]
    assert got == [
        (split.id, LabelSource.human, Choice.a),
        (split.id, LabelSource.human, Choice.b),
        (tie.id, LabelSource.human, Choice.tie),
        (audited.id, LabelSource.human, Choice.b),
        (withdrawn.id, LabelSource.human, Choice.a),
    ]
