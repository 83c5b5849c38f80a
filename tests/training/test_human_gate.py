"""The human gate end to end: a candidate trained on flipped labels (so worse than v0 by the
judge), let through by an automatic gate whose threshold is 0, is deployed pending the human
votes; simulated annotators vote on its blind evaluation pairs through the queue, and the human
gate rolls it back to v0."""

from __future__ import annotations

import pytest
from sqlmodel import select

from labeling.demo_task import gold_judge
from labeling.simulate import simulate_labels
from storage import crud, evaluation
from storage.db import transaction
from storage.models import Audit, Pair
from tests.training.conftest import labeled_iteration, make_loop_runtime
from training.human_eval import check_human_gate, human_leaderboard
from training.iteration import train_iteration

pytestmark = pytest.mark.slow


def test_the_human_gate_rolls_back_a_worse_candidate_the_automatic_gate_let_through(
    tmp_path, demo_policy_dir
):
    # as in test_iteration.py's rejected candidate: enough steps on flipped labels to be worse
    dpo = {"num_train_epochs": 4, "per_device_train_batch_size": 8, "learning_rate": 2e-3}
    gate = {
        "win_rate_threshold": 0.0,  # the automatic gate lets anything through
        "gate": "human",
        "n_prompts": 16,
        "samples_per_prompt": 2,
        "human_min_votes": 24,
    }
    rt = make_loop_runtime(tmp_path / "data", demo_policy_dir, dpo=dpo, eval=gate)
    labeled_iteration(rt, 24, flip=True)  # annotators who prefer the worst reply
    report = train_iteration(engine=rt.engine, settings=rt.settings, continue_loop=False)
    assert report.decision == "deployed" and report.gate["win_rate"] < 0.5, report

    with transaction(rt.engine, readonly=True) as session:
        v1 = crud.deployed_policy(session=session)
        queued = evaluation.eval_queue_counts(session=session)["queued"]
        opponents = evaluation.open_slots(session=session, a_version=1, b_version=0)
    assert v1.version == 1 and v1.metrics["human_gate"] == {"status": "pending", "opponent": 0}
    # the candidate against v0 (the deployed one, and pi_0): up to 16 prompts x 2 replies
    assert 24 <= queued == opponents <= 32
    assert check_human_gate(engine=rt.engine, settings=rt.settings).decision == "pending"

    # an evaluation round: evaluation pairs first (the iteration's own pairs are queued too)
    round_ = rt.settings.model_copy(
        update={"eval": rt.settings.eval.model_copy(update={"human_share": 1.0})}
    )
    votes = simulate_labels(
        engine=rt.engine,
        settings=round_,
        annotators=3,
        noise=0.5,
        judge=gold_judge,
        max_labels=queued,
    )
    with transaction(rt.engine, readonly=True) as session:
        assert votes == queued == evaluation.eval_queue_counts(session=session)["votes"]
    board = human_leaderboard(engine=rt.engine, settings=rt.settings)
    assert [r.version for r in board.ratings] == [0, 1]  # the worse version ranks below

    decided = check_human_gate(engine=rt.engine, settings=rt.settings)
    assert decided.decision == "rolled_back" and decided.votes == queued
    assert decided.win_rate < 0.5 and decided.lower < decided.threshold == 0.5
    with transaction(rt.engine, readonly=True) as session:
        assert crud.deployed_policy(session=session).version == 0
        v1 = crud.get_policy(session=session, version=1)
        audits = [(a.action, a.detail) for a in session.exec(select(Audit).order_by(Audit.id))]
        eval_pairs = session.exec(select(Pair).where(Pair.route == "eval")).all()
    assert v1.status == "rejected" and v1.metrics["human_gate"]["status"] == "rolled_back"
    assert [action for action, _ in audits][-2:] == ["policy.deploy", "policy.human_rollback"]
    assert audits[-2][1]["version"] == 0 and audits[-1][1]["win_rate"] == decided.win_rate
    assert {p.iteration_id for p in eval_pairs} == {None}  # never an iteration's pairs
