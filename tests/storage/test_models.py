"""Round trips and the constraints that keep data honest, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, StatementError

from storage import crud
from storage.db import transaction
from storage.models import (
    Choice,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    Response,
    Role,
    Suggestion,
)
from tests.factories import make_pairs, make_policy, make_prompts, make_user


def test_round_trip_keeps_every_field(engine):
    with transaction(engine) as session:
        user = make_user(session, role=Role.admin)
        policy = make_policy(session)
        (pair,) = make_pairs(session, 1, overlap=3)
        session.add(Suggestion(pair_id=pair.id, p_a=0.8, uncertainty=0.05, agent="proxy:v1"))
        session.add(
            Label(pair_id=pair.id, user_id=user.id, choice=Choice.b, swapped=True, seconds=4.5)
        )
        ids = user.id, policy.id, pair.id
    with transaction(engine, readonly=True) as session:
        user = crud.get_user(session=session, user_id=ids[0])
        assert user.role is Role.admin and user.created_at.tzinfo is not None
        pair = session.get(Pair, ids[2])
        assert (pair.overlap, pair.status) == (3, PairStatus.queued)
        label = session.exec(sa.select(Label).where(Label.pair_id == pair.id)).scalar_one()
        assert (label.choice, label.swapped, label.seconds) == (Choice.b, True, 4.5)
        assert crud.deployed_policy(session=session).id == ids[1]


def test_one_label_per_pair_and_user(engine):
    with transaction(engine) as session:
        user = make_user(session)
        (pair,) = make_pairs(session, 1)
        session.add(Label(pair_id=pair.id, user_id=user.id, choice=Choice.a))
        ids = user.id, pair.id
    with pytest.raises(IntegrityError), transaction(engine) as session:
        session.add(Label(pair_id=ids[1], user_id=ids[0], choice=Choice.b))
    with transaction(engine, readonly=True) as session:
        labels = session.exec(sa.select(Label)).scalars().all()
        assert [label.choice for label in labels] == [Choice.a]


def test_one_proxy_label_per_pair(engine):
    with transaction(engine) as session:
        (pair,) = make_pairs(session, 1)
        session.add(Label(pair_id=pair.id, source=LabelSource.proxy, choice=Choice.a))
        pair_id = pair.id
    with pytest.raises(IntegrityError), transaction(engine) as session:
        session.add(Label(pair_id=pair_id, source=LabelSource.proxy, choice=Choice.b))


def test_foreign_keys_are_enforced(engine):
    with pytest.raises(IntegrityError), transaction(engine) as session:
        session.add(Response(prompt_id=12345, text="orphan"))


def test_a_pair_needs_two_different_responses(engine):
    with transaction(engine) as session:
        (pair,) = make_pairs(session, 1)
        prompt_id, a_id = pair.prompt_id, pair.response_a_id
    with pytest.raises(IntegrityError), transaction(engine) as session:
        session.add(Pair(prompt_id=prompt_id, response_a_id=a_id, response_b_id=a_id))


def test_unknown_enum_values_are_refused(engine):
    with transaction(engine) as session:
        (pair,) = make_pairs(session, 1)
        pair_id = pair.id
    with pytest.raises(StatementError), transaction(engine) as session:
        session.add(Label(pair_id=pair_id, choice="maybe"))
    # and by the database itself, whatever the ORM lets through
    with pytest.raises(IntegrityError), transaction(engine) as session:
        session.execute(sa.text("UPDATE pair SET status = 'lost' WHERE id = :id"), {"id": pair_id})


def test_failed_transaction_writes_nothing(engine):
    with pytest.raises(RuntimeError), transaction(engine) as session:
        make_prompts(session, 3)
        raise RuntimeError("boom")
    with transaction(engine, readonly=True) as session:
        assert crud.table_counts(session=session)["prompt"] == 0


def test_prompts_are_deduplicated(engine):
    records = [crud.PromptIn(text=t) for t in ["a", "b", "a", " b "]]
    with transaction(engine) as session:
        assert crud.add_prompts(session=session, prompts=records) == (2, 2)
    with transaction(engine) as session:
        more = [crud.PromptIn(text="a"), crud.PromptIn(text="c")]
        assert crud.add_prompts(session=session, prompts=more) == (1, 1)


def test_user_names_are_unique(engine):
    with transaction(engine) as session:
        make_user(session, name="ann")
    with pytest.raises(crud.Conflict), transaction(engine) as session:
        make_user(session, name="ann")


def test_run_time_settings_round_trip(engine):
    with transaction(engine) as session:
        user = make_user(session, role=Role.admin)
        crud.set_overrides(session=session, values={"dpo.beta": 0.2}, user_id=user.id)
    with transaction(engine) as session:
        crud.set_overrides(session=session, values={"dpo.beta": 0.3}, user_id=user.id)
    with transaction(engine, readonly=True) as session:
        assert crud.get_overrides(session=session) == {"dpo.beta": 0.3}


def test_iteration_lifecycle(engine):
    from storage.models import IterationState as S

    with transaction(engine) as session:
        first = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=5, human_budget=9
        )
        assert (first.k, first.state) == (0, S.generating)
        with pytest.raises(crud.Conflict, match="still generating"):
            crud.start_iteration(session=session, policy_in_id=None, human_quota=5, human_budget=9)
        with pytest.raises(crud.Conflict, match="cannot go from generating to training"):
            crud.set_iteration_state(session=session, iteration_id=first.id, state=S.training)
        for state in (S.labeling, S.training, S.evaluating, S.rejected):
            crud.set_iteration_state(session=session, iteration_id=first.id, state=state)
        assert first.finished_at is not None and first.labeling_at is not None
        second = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=5, human_budget=9
        )
        crud.set_iteration_state(
            session=session, iteration_id=second.id, state=S.failed, error="oom"
        )
        assert (second.k, second.state, second.error) == (1, S.failed, "oom")
        with pytest.raises(crud.Conflict, match="failed already"):
            crud.set_iteration_state(session=session, iteration_id=second.id, state=S.failed)


def test_missing_policies_and_iterations_raise_not_found(engine):
    with transaction(engine) as session:
        policy = make_policy(session, version=3)
        iteration = crud.start_iteration(
            session=session, policy_in_id=policy.id, human_quota=5, human_budget=9
        )
        assert crud.get_policy_by_id(session=session, policy_id=policy.id).version == 3
        assert crud.get_iteration_by_k(session=session, k=iteration.k).id == iteration.id
        with pytest.raises(crud.NotFound, match="no policy with id"):
            crud.get_policy_by_id(session=session, policy_id=policy.id + 1)
        with pytest.raises(crud.NotFound, match="no iteration 1"):
            crud.get_iteration_by_k(session=session, k=1)
        with pytest.raises(crud.NotFound, match="no iteration with id"):
            crud.get_iteration(session=session, iteration_id=iteration.id + 1)
