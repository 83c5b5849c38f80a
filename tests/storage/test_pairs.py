"""The round's data access: what an iteration's pairs can take, which prompts evaluation reads."""

from __future__ import annotations

from storage import crud, evaluation, pairs
from storage.db import transaction
from storage.models import PairStatus, Prompt, Route, Split
from tests.factories import make_pairs, make_prompts


def test_human_capacity_counts_the_overlap_of_pairs_for_humans(engine):
    with transaction(engine) as session:
        iteration = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=5, human_budget=9
        )
        assert pairs.human_capacity(session=session, iteration_id=iteration.id) == 0
        at = {"iteration_id": iteration.id}
        make_pairs(session, 2, route=Route.human, overlap=3, **at)
        make_pairs(session, 1, route=Route.audit, overlap=2, **at)
        make_pairs(session, 4, route=Route.proxy, status=PairStatus.done, **at)
        make_pairs(session, 1, route=Route.human, overlap=5, status=PairStatus.discarded, **at)
        make_pairs(session, 1, route=Route.human, overlap=7)  # another iteration's
        assert pairs.human_capacity(session=session, iteration_id=iteration.id) == 2 * 3 + 2


def test_eval_prompts_are_the_first_active_held_out_prompts(engine):
    with transaction(engine) as session:
        make_prompts(session, 2)
        held_out = [session.get(Prompt, i) for i in make_prompts(session, 4, split=Split.eval)]
        held_out.sort(key=lambda prompt: prompt.id)
        held_out[1].active = False
        session.flush()
        rows = evaluation.eval_prompts(session=session, limit=2)
        assert rows == [(held_out[0].id, held_out[0].text), (held_out[2].id, held_out[2].text)]
        assert len(evaluation.eval_prompts(session=session, limit=None)) == 3
