"""The held-out implicit reward's pairs (training.evaluate.heldout_implicit_reward) on the support
demo's policy: `eval.implicit_reward_samples` sets how many of pi_0's replies per held-out prompt
it pairs, apart from the replies each candidate generates for the win-rate, and pi_0's draw
of them also serves its win-rate samples."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from storage import crud
from storage.db import transaction
from storage.models import Label
from tests.training.conftest import make_loop_runtime
from training.evaluate import (
    cached_samples,
    eval_prompts,
    gold_judge,
    heldout_implicit_reward,
    implicit_reward_samples,
)


def test_implicit_reward_samples_pairs_more_of_pi0s_replies_than_the_win_rate_samples(
    tmp_path, demo_policy_dir
):
    ev = {"n_prompts": 8, "samples_per_prompt": 1, "implicit_reward_samples": 6}
    rt = make_loop_runtime(tmp_path / "data", demo_policy_dir, eval=ev)
    assert implicit_reward_samples(rt.settings) == 6
    with transaction(rt.engine, readonly=True) as session:
        first = crud.list_policies(session=session)[0]
    result = heldout_implicit_reward(
        engine=rt.engine,
        settings=rt.settings,
        version=first.version,
        first=first,
        judge=gold_judge(rt.settings),
    )
    # every two of a prompt's 6 replies, 15 pairs at most (ties left out): more than one a
    # prompt is only possible with pi_0's 6 replies, not the win-rate's 1
    assert 8 < result["n_pairs"] <= 120, result
    # pi_0 against itself: no reward either way
    assert result["margin"] == 0.0 and result["accuracy"] == 0.0
    (drawn,) = [
        p for p in (rt.settings.data_dir / "eval").glob("v0-*.json") if "logps" not in p.name
    ]
    cached = json.loads(drawn.read_text())
    assert drawn.name.endswith("-n6.json") and [len(r) for r in cached] == [6] * 8

    # the win-rate's 2 replies a prompt are the first 2 of that draw: nothing drawn again
    prompts = eval_prompts(engine=rt.engine, settings=rt.settings, n=8)
    seed = rt.settings.eval.seed
    two = cached_samples(settings=rt.settings, policy=first, prompts=prompts, seed=seed, n=2)
    assert two == [replies[:2] for replies in cached]
    assert len(list((rt.settings.data_dir / "eval").glob("v0-*-n*.json"))) == 1

    # unset: the win-rate's samples per prompt
    unset = rt.settings.model_copy(
        update={"eval": rt.settings.eval.model_copy(update={"implicit_reward_samples": None})}
    )
    assert implicit_reward_samples(unset) == 1


def _eval_files(rt) -> list[str]:
    folder = rt.settings.data_dir / "eval"
    return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []


def test_the_scheduler_draws_the_evaluations_baselines_while_a_round_is_labeled(
    tmp_path, demo_policy_dir, monkeypatch
):
    """With a round open and nothing queued, the scheduler's tick draws pi_0's held-out replies,
    scores their log-probabilities and draws the deployed policy's win-rate samples; the
    evaluation after training then draws and scores nothing of pi_0's again."""
    from app.scheduler import prepare_while_labeling, start_scheduler
    from tests.training.conftest import labeled_iteration
    from training import evaluate, implicit_reward

    ev = {"n_prompts": 8, "samples_per_prompt": 2, "implicit_reward_samples": 6}
    # one dispatch tick, when the scheduler starts
    rt = make_loop_runtime(
        tmp_path / "data", demo_policy_dir, eval=ev, loop={"quota_check_seconds": 3600}
    )
    prepare_while_labeling(rt, rt.settings)
    assert _eval_files(rt) == []  # no round open: nothing to get ahead of

    iteration_id = labeled_iteration(rt, 2)
    with transaction(rt.engine) as session:  # a round just queued: its pairs wait for labels
        session.execute(sa.delete(Label))
    with transaction(rt.engine, readonly=True) as session:
        first = crud.list_policies(session=session)[0]
    handle = start_scheduler(rt)
    try:
        # a bound against a hang only: the draw takes seconds, the bound is ten minutes
        deadline = time.monotonic() + 600
        while len(_eval_files(rt)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        handle.shutdown(wait=True)
    # pi_0's 6 replies a prompt (its win-rate's 2 are the first 2 of them) and their log-probs
    draw, logps = _eval_files(rt)
    assert draw.startswith("v0-") and draw.endswith("-n6.json") and logps.startswith("v0-logps-")
    with transaction(rt.engine, readonly=True) as session:
        assert crud.get_iteration(session=session, iteration_id=iteration_id).state == "labeling"

    calls = []
    monkeypatch.setattr(
        "labeling.generation.generate", lambda *a, **k: calls.append("generate") or []
    )
    scored = implicit_reward.policy_logprobs
    monkeypatch.setattr(
        implicit_reward,
        "policy_logprobs",
        lambda *a, **k: calls.append("logprobs") or scored(*a, **k),
    )
    judge = gold_judge(rt.settings)
    heldout = evaluate.heldout_implicit_reward(
        engine=rt.engine, settings=rt.settings, version=first.version, first=first, judge=judge
    )
    evaluate.head_to_head(
        engine=rt.engine,
        settings=rt.settings,
        a_version=first.version,
        b_versions=[first.version],
    )
    assert heldout["n_pairs"] > 8
    assert calls == ["logprobs"]  # the candidate's own scoring, nothing of pi_0's
    assert evaluate.prepare_baselines(engine=rt.engine, settings=rt.settings) == []
