"""The held-out implicit reward's pairs (training.evaluate.heldout_implicit_reward) on the support
demo's policy: `eval.implicit_reward_samples` sets how many of pi_0's replies per held-out prompt
it pairs, apart from the replies each candidate generates for the win-rate, and pi_0's draw
of them also serves its win-rate samples."""

from __future__ import annotations

import json

from storage import crud
from storage.db import transaction
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
    prompts = eval_prompts(engine=rt.engine, n=8)
    seed = rt.settings.eval.seed
    two = cached_samples(settings=rt.settings, policy=first, prompts=prompts, seed=seed, n=2)
    assert two == [replies[:2] for replies in cached]
    assert len(list((rt.settings.data_dir / "eval").glob("v0-*-n*.json"))) == 1

    # unset: the win-rate's samples per prompt
    unset = rt.settings.model_copy(
        update={"eval": rt.settings.eval.model_copy(update={"implicit_reward_samples": None})}
    )
    assert implicit_reward_samples(unset) == 1
