"""An iteration's generation step end to end on the demo policy, then simulated annotators
and quality."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from labeling import demo_task as demo
from labeling.iteration import generate_iteration
from labeling.quality import quality_report
from labeling.simulate import simulate_labels
from storage import crud
from storage.db import transaction
from storage.models import (
    Iteration,
    IterationState,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    PolicyStatus,
    Prompt,
    Response,
    Route,
    Split,
    Suggestion,
)
from storage.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def policy_dir(demo_policy_dir):
    return demo_policy_dir


def setup_loop(engine, tmp_path, policy_dir, **sections) -> Settings:
    generation = {
        "n_samples": 4,
        "max_new_tokens": 24,
        "prompts_per_round": 6,
        "batch_size": 6,
        "device": "cpu",
    } | sections.pop("generation", {})
    settings = Settings(data_dir=tmp_path, generation=generation, **sections)
    prompts = [crud.PromptIn(text=t, split=s) for t, s in demo.demo_prompts(0)[:20]]
    with transaction(engine) as session:
        crud.add_prompts(session=session, prompts=prompts)
        crud.create_policy(
            session=session, version=0, path=str(policy_dir), status=PolicyStatus.deployed
        )
    return settings


def test_first_iteration_pairs_at_random_for_humans_then_simulated_labels(
    engine, tmp_path, policy_dir
):
    settings = setup_loop(engine, tmp_path, policy_dir)
    report = generate_iteration(engine=engine, settings=settings)
    assert report["iteration_k"] == 0 and report["prompts"] == 6
    assert report["responses"] == 24 and report["strategy"] == "random"  # no proxy fitted yet
    assert report["routes"]["human"] == report["pairs"] >= 4
    with transaction(engine, readonly=True) as session:
        iteration = session.exec(sa.select(Iteration)).scalar_one()
        assert iteration.state == IterationState.labeling
        responses = session.exec(sa.select(Response)).scalars().all()
        assert sorted({r.sampling["temperature"] for r in responses}) == [0.7, 1.0]
        assert all(r.sampling["max_new_tokens"] == 24 for r in responses)
        assert all(r.sampling["policy_version"] == 0 for r in responses)
        assert all(r.policy_id == iteration.policy_in_id for r in responses)
        assert all(r.iteration_id == iteration.id for r in responses)
        assert session.exec(sa.select(sa.func.count(Suggestion.id))).scalar_one() == 0
        for pair in session.exec(sa.select(Pair)).scalars():
            a, b = (
                session.get(Response, pair.response_a_id),
                session.get(Response, pair.response_b_id),
            )
            assert a.prompt_id == b.prompt_id == pair.prompt_id and a.text != b.text

    # two simulated annotators label everything through the queue
    n = simulate_labels(engine=engine, settings=settings, annotators=2, noise=0.5)
    assert n == report["pairs"]
    with transaction(engine, readonly=True) as session:
        statuses = session.exec(sa.select(Pair.status)).scalars().all()
        assert set(statuses) == {PairStatus.done}
        users = {u.name for u in crud.list_users(session=session)}
    assert {"sim-1", "sim-2"} <= users
    quality = quality_report(engine=engine)
    assert quality["human_labels"] == n
    assert sum(a["labels"] for a in quality["annotators"]) == n
    assert all(a["median_seconds"] > 0 for a in quality["annotators"])


def test_confident_pairs_are_labeled_by_the_proxy_within_the_human_budget(
    engine, tmp_path, policy_dir
):
    settings = setup_loop(
        engine,
        tmp_path,
        policy_dir,
        proxy={"kind": "judge"},
        routing={
            "enabled": True,
            "tau": 0.3,
            "max_uncertainty": 0.1,
            "audit_share": 0.5,
            "human_budget": 2,
        },
        labeling={"overlap": 2},
    )
    report = generate_iteration(engine=engine, settings=settings)
    assert report["strategy"] == "max_min"
    assert report["routes"]["human"] + report["routes"]["audit"] <= 2
    with transaction(engine, readonly=True) as session:
        rows = session.exec(sa.select(Pair)).scalars().all()
        suggestions = {s.pair_id: s for s in session.exec(sa.select(Suggestion)).scalars()}
        proxy_labels = {
            label.pair_id: label
            for label in session.exec(
                sa.select(Label).where(Label.source == LabelSource.proxy)
            ).scalars()
        }
    assert len(suggestions) == len(rows)
    by_route = {route: [p for p in rows if p.route == route] for route in Route}
    # the gold judge is sure of most demo pairs: the proxy takes some, humans get the budget
    assert by_route[Route.proxy], report
    assert 0 < len(by_route[Route.human]) + len(by_route[Route.audit]) <= 2
    assert report["routes"] == {route.value: len(by_route[route]) for route in Route}
    for pair in rows:
        s = suggestions[pair.id]
        assert s.agent == "judge:labeling.demo_task:gold_judge"
        assert s.reward_a >= s.reward_b  # max_min: a is the proxy's best
        if pair.route == Route.proxy:
            assert abs(s.p_a - 0.5) >= 0.3
            assert pair.status == PairStatus.done and pair.id in proxy_labels
        else:
            assert pair.status == PairStatus.queued and pair.overlap == 2
            assert pair.id not in proxy_labels


def test_explore_pairs_the_policy_with_a_hotter_enhancer(engine, tmp_path, policy_dir):
    settings = setup_loop(
        engine,
        tmp_path,
        policy_dir,
        proxy={"kind": "judge"},
        pairing={"strategy": "explore", "enhancer_temperature": 1.5, "enhancer_samples": 2},
    )
    report = generate_iteration(engine=engine, settings=settings, n_prompts=3)
    assert report["responses"] == 3 * (4 + 2)
    with transaction(engine, readonly=True) as session:
        explored = session.exec(sa.select(Pair)).scalars().all()
        assert len(explored) == report["pairs"] > 0
        for pair in explored:
            a, b = (
                session.get(Response, pair.response_a_id),
                session.get(Response, pair.response_b_id),
            )
            assert "role" not in a.sampling
            assert b.sampling["role"] == "enhancer" and b.sampling["temperature"] == 1.5


def test_a_failed_generation_leaves_the_iteration_failed_and_stores_nothing(
    engine, tmp_path, policy_dir
):
    settings = setup_loop(engine, tmp_path, tmp_path / "no-such-policy")
    with pytest.raises(Exception):  # noqa: B017 - whatever transformers raises for a bad path
        generate_iteration(engine=engine, settings=settings)
    with transaction(engine, readonly=True) as session:
        iteration = session.exec(sa.select(Iteration)).scalar_one()
        assert iteration.state == IterationState.failed and "generation" in iteration.error
        assert session.exec(sa.select(sa.func.count(Response.id))).scalar_one() == 0


@pytest.mark.slow
def test_second_iteration_pairs_by_the_refit_proxy(engine, tmp_path, policy_dir):
    from labeling.proxy import refit_proxy

    settings = setup_loop(
        engine,
        tmp_path,
        policy_dir,
        labeling={"overlap": 2},  # 6 pairs, 12 labels
    )
    first = generate_iteration(engine=engine, settings=settings)
    simulate_labels(engine=engine, settings=settings, annotators=2, noise=0.5)
    version = refit_proxy(engine=engine, settings=settings)
    assert version is not None and version.n_labels >= 8
    with transaction(engine) as session:  # the training step, cut short
        for state in (IterationState.training, IterationState.evaluating, IterationState.rejected):
            crud.set_iteration_state(
                session=session, iteration_id=first["iteration_id"], state=state
            )
    second = generate_iteration(engine=engine, settings=settings)
    assert (second["iteration_k"], second["strategy"], second["proxy"]) == (
        1,
        "max_min",
        "proxy:v1",
    )
    with transaction(engine, readonly=True) as session:
        rows = (
            session.exec(sa.select(Pair).where(Pair.iteration_id == second["iteration_id"]))
            .scalars()
            .all()
        )
        suggestions = {s.pair_id: s for s in session.exec(sa.select(Suggestion)).scalars()}
        prompts_first = {
            p.prompt_id
            for p in session.exec(
                sa.select(Pair).where(Pair.iteration_id == first["iteration_id"])
            ).scalars()
        }
        responses = (
            session.exec(sa.select(Response).where(Response.iteration_id == second["iteration_id"]))
            .scalars()
            .all()
        )
    assert rows and all(suggestions[p.id].agent == "proxy:v1" for p in rows)
    assert all(suggestions[p.id].reward_a > suggestions[p.id].reward_b for p in rows)
    assert all(r.proxy_version == 1 and r.proxy_reward is not None for r in responses)
    # the least-sampled prompts come first: iteration 1 samples prompts iteration 0 did not
    assert not prompts_first & {p.prompt_id for p in rows}


def _add_long_prompt(engine, split: Split) -> int:
    """A prompt of about 400 of the demo tokenizer's tokens, past the demo policy's 256."""
    text = "my order arrived broken and the refund page says error, please help " * 30
    with transaction(engine) as session:
        crud.add_prompts(session=session, prompts=[crud.PromptIn(text=text, split=split)])
        return session.exec(sa.select(Prompt.id).where(Prompt.text == text)).scalar_one()


def test_a_prompt_too_long_for_the_policy_is_left_out_of_the_round(engine, tmp_path, policy_dir):
    """A prompt whose tokens and generation.max_new_tokens pass the policy's context window
    (vLLM refuses it, transformers samples past the trained positions) gets no responses; the
    round takes the next prompts in its place and counts it."""
    from labeling.generation import ContextFit

    settings = setup_loop(engine, tmp_path, policy_dir)
    long_id = _add_long_prompt(engine, Split.train)
    fit = ContextFit(policy_dir, max_new_tokens=24)
    with transaction(engine, readonly=True) as session:
        long_text = session.get(Prompt, long_id).text
        n_train = session.exec(
            sa.select(sa.func.count(Prompt.id)).where(Prompt.split == Split.train)
        ).scalar_one()
    assert fit.window == 256 and fit.tokens(long_text) > 256
    report = generate_iteration(engine=engine, settings=settings, n_prompts=n_train)
    assert (report["prompts"], report["prompts_too_long"]) == (n_train - 1, 1)
    with transaction(engine, readonly=True) as session:
        prompt_ids = set(session.exec(sa.select(Response.prompt_id)).scalars())
    assert len(prompt_ids) == n_train - 1 and long_id not in prompt_ids


def test_a_reply_budget_that_leaves_no_room_for_a_prompt_fails_the_round_naming_it(
    engine, tmp_path, policy_dir
):
    from labeling.iteration import GenerationError

    settings = setup_loop(engine, tmp_path, policy_dir, generation={"max_new_tokens": 256})
    with pytest.raises(GenerationError) as info:
        generate_iteration(engine=engine, settings=settings)
    assert str(info.value).startswith("no active train prompt can be sampled: ")
    assert " too long for the policy (the policy's context is 256 tokens and " in str(info.value)
    assert "generation.max_new_tokens (256) leaves none for a prompt" in str(info.value)
    with transaction(engine, readonly=True) as session:
        iteration = session.exec(sa.select(Iteration)).scalar_one()
        assert iteration.state == IterationState.failed
        assert session.exec(sa.select(sa.func.count(Response.id))).scalar_one() == 0


def test_evaluation_leaves_out_a_held_out_prompt_too_long_for_the_policy(
    engine, tmp_path, policy_dir
):
    """The held-out set is the first eval.n_prompts prompts that fit pi_0 with the evaluation's
    reply budget (eval.max_new_tokens); with none that fits, the error names the setting."""
    from storage import evaluation
    from training.evaluate import held_out_prompts

    settings = setup_loop(engine, tmp_path, policy_dir)
    long_id = _add_long_prompt(engine, Split.eval)
    with transaction(engine, readonly=True) as session:
        stored = evaluation.eval_prompts(session=session, limit=None)
    assert long_id in [pid for pid, _ in stored]
    kept = held_out_prompts(engine=engine, settings=settings, n=len(stored))
    assert kept == [row for row in stored if row[0] != long_id]
    assert held_out_prompts(engine=engine, settings=settings, n=2) == kept[:2]

    no_room = settings.model_copy(
        update={"eval": settings.eval.model_copy(update={"max_new_tokens": 300})}
    )
    with pytest.raises(ValueError, match=r"eval\.max_new_tokens \(300\) leaves none"):
        held_out_prompts(engine=engine, settings=no_room, n=4)


def test_a_conversation_the_chat_template_refuses_is_left_out_of_the_round(
    engine, tmp_path, policy_dir
):
    """A chat template may refuse a conversation (Gemma's a system turn, Mistral's turns that do
    not alternate); the sampling call failed the round on it. The round passes over it, counted,
    and samples the others."""
    from tests.factories import refusing_system_turns

    strict = refusing_system_turns(policy_dir, tmp_path / "strict")
    settings = setup_loop(engine, tmp_path, strict)
    system = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "where is my order?"},
    ]
    with transaction(engine) as session:
        crud.add_prompts(session=session, prompts=[crud.PromptIn(text="", messages=system)])
        refused_id = session.exec(sa.select(sa.func.max(Prompt.id))).scalar_one()
        n_train = session.exec(
            sa.select(sa.func.count(Prompt.id)).where(Prompt.split == Split.train)
        ).scalar_one()
    report = generate_iteration(engine=engine, settings=settings, n_prompts=n_train)
    assert (report["prompts"], report["prompts_refused_by_template"]) == (n_train - 1, 1)
    assert report["prompts_too_long"] == 0
    with transaction(engine, readonly=True) as session:
        prompt_ids = set(session.exec(sa.select(Response.prompt_id)).scalars())
    assert len(prompt_ids) == n_train - 1 and refused_id not in prompt_ids
