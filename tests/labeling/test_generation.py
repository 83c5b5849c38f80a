"""Sampling from the demo policy through the generation interface."""

from __future__ import annotations

import importlib.util

import pytest

from labeling.generation import generate, load_sampler, render_prompt, split_temperatures
from storage.settings import GenerationSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PROMPTS = [
    "Hi, this is Maria. I was charged twice for invoice #48213. Please fix this.",
    [{"role": "user", "content": "My account #55120 is locked. - Tom"}],
    "Please cancel my subscription on account #12345. Thanks, Omar",
]


def test_split_temperatures():
    assert split_temperatures(8, [1.0, 0.7]) == [(1.0, 4), (0.7, 4)]
    assert split_temperatures(5, [1.0, 0.7]) == [(1.0, 3), (0.7, 2)]
    assert split_temperatures(1, [1.0, 0.7]) == [(1.0, 1)]
    with pytest.raises(ValueError):
        split_temperatures(0, [1.0])


@pytest.fixture(scope="module")
def policy_dir(demo_policy_dir):
    return demo_policy_dir


@pytest.fixture(scope="module")
def sampler(policy_dir):
    settings = GenerationSettings(max_new_tokens=48, batch_size=2, device="cpu")
    sampler = load_sampler(policy_dir, settings)
    yield sampler
    sampler.close()


def test_chat_template_renders_a_string_as_a_user_turn(sampler):
    text, has_special = render_prompt(sampler.tokenizer, "Where is my order?")
    assert has_special and "Where is my order?" in text
    assert (
        text
        == render_prompt(sampler.tokenizer, [{"role": "user", "content": "Where is my order?"}])[0]
    )


def test_samples_n_per_prompt_split_over_temperatures(sampler):
    rows = sampler.sample(PROMPTS, n=4, temperatures=[1.0, 0.7], seed=3)
    assert len(rows) == len(PROMPTS)
    for row in rows:
        assert [s.temperature for s in row] == [1.0, 1.0, 0.7, 0.7]
        for s in row:
            assert s.text and "<|" not in s.text  # special tokens are not in the text
            assert 1 <= s.n_tokens <= 48
            assert s.sampling()["backend"] == "transformers"
            assert s.sampling()["max_new_tokens"] == 48
    # sampling varies within a prompt
    assert any(len({s.text for s in row}) > 1 for row in rows)
    again = sampler.sample(PROMPTS, n=4, temperatures=[1.0, 0.7], seed=3)
    assert [[s.text for s in row] for row in again] == [[s.text for s in row] for row in rows]
    other = sampler.sample(PROMPTS, n=4, temperatures=[1.0, 0.7], seed=4)
    assert [[s.text for s in row] for row in other] != [[s.text for s in row] for row in rows]


def test_demo_policy_answers_in_its_task(sampler):
    rows = sampler.sample(PROMPTS[:1], n=4, temperatures=[0.7], seed=0)
    # the demo policy was trained on support replies: most samples end on their own
    assert sum(s.finished for s in rows[0]) >= 2


def test_generate_greedy_is_deterministic(policy_dir):
    first = generate(policy_dir, PROMPTS[:2], temperature=0, n=2, max_new_tokens=16)
    assert len(first) == 2 and all(len(row) == 2 and row[0] == row[1] for row in first)
    assert generate(policy_dir, PROMPTS[:2], temperature=0, n=1, max_new_tokens=16) == [
        row[:1] for row in first
    ]


def test_unknown_backend_is_refused():
    settings = GenerationSettings().model_construct(backend="tgi")
    with pytest.raises(ValueError, match="tgi"):
        load_sampler("/nowhere", settings)


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_backend(policy_dir):
    settings = GenerationSettings(backend="vllm", max_new_tokens=24, gpu_memory_utilization=0.3)
    sampler = load_sampler(policy_dir, settings)
    try:
        rows = sampler.sample(PROMPTS, n=4, temperatures=[1.0, 0.7], seed=0)
    finally:
        sampler.close()
    assert [[s.temperature for s in row] for row in rows] == [[1.0, 1.0, 0.7, 0.7]] * 3
    assert all(s.text and s.sampling()["backend"] == "vllm" for row in rows for s in row)
