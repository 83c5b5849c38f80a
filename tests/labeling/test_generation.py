"""Sampling from the demo policy through the generation interface."""

from __future__ import annotations

import pytest

from labeling.generation import (
    fast_bf16,
    generate,
    load_sampler,
    render_prompt,
    split_temperatures,
)
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


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "bf16"),
    [(True, True, True), (False, True, True), (False, False, False)],
    ids=["amx", "avx512-bf16-alone", "neither"],
)
def test_bf16_on_a_cpu_that_multiplies_it_natively(monkeypatch, amx, avx512_bf16, bf16):
    """An AMX CPU and one with AVX512-BF16 alone (AMD's Zen 4 and later) get bf16; a CPU
    without AVX512-BF16, where bf16 is emulated, gets fp32."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert fast_bf16("cpu") is bf16


def test_unknown_backend_is_refused():
    settings = GenerationSettings().model_construct(backend="tgi")
    with pytest.raises(ValueError, match="tgi"):
        load_sampler("/nowhere", settings)


# The contract both backends keep, on SmolLM2-135M-Instruct (chat template, <|im_end|> stops a
# reply). The vllm half runs in .venv-vllm (`make test-vllm`), the transformers half in .venv.
CHAT_PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    [{"role": "user", "content": "Answer with one word: is the sky blue?"}],
    "List three fruits.",
]
TEMPLATE_MARKS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|", "assistant\n", "user\n")


@pytest.fixture(
    scope="module", params=["transformers", pytest.param("vllm", marks=pytest.mark.vllm)]
)
def chat_sampler(request, smollm2_dir):
    settings = GenerationSettings(backend=request.param, max_new_tokens=24, device="cpu")
    sampler = load_sampler(smollm2_dir, settings)
    yield sampler
    sampler.close()


def _with_max_new_tokens(sampler, max_new_tokens: int):
    settings = sampler.settings.model_copy(update={"max_new_tokens": max_new_tokens})
    if sampler.backend == "vllm":
        sampler.engine.configure(settings)  # sampling settings only: the engine stays
    sampler.settings = settings


@pytest.mark.slow
def test_backends_keep_one_sampling_contract(chat_sampler):
    backend = chat_sampler.backend
    try:
        _with_max_new_tokens(chat_sampler, 24)
        rows = chat_sampler.sample(CHAT_PROMPTS, n=4, temperatures=[1.0, 0.7], seed=5)
        assert len(rows) == len(CHAT_PROMPTS)
        for row in rows:
            assert [s.temperature for s in row] == [1.0, 1.0, 0.7, 0.7]  # n split evenly, in order
            for s in row:
                assert s.text == s.text.strip() and s.text
                assert not any(mark in s.text for mark in TEMPLATE_MARKS), s.text
                assert 1 <= s.n_tokens <= 24
                assert s.sampling()["backend"] == backend and s.max_new_tokens == 24
                if not s.finished:
                    assert s.n_tokens == 24  # only max_new_tokens ends a reply unfinished
        story = rows[0]
        assert not any(s.finished for s in story)  # a long story is cut at 24 tokens
        one_word = rows[1]
        assert any(s.finished and s.n_tokens < 24 for s in one_word)  # <|im_end|> stops it
        texts = [[s.text for s in row] for row in rows]
        again = chat_sampler.sample(CHAT_PROMPTS, n=4, temperatures=[1.0, 0.7], seed=5)
        assert [[s.text for s in row] for row in again] == texts  # same seed, same samples
        other = chat_sampler.sample(CHAT_PROMPTS, n=4, temperatures=[1.0, 0.7], seed=6)
        assert [[s.text for s in row] for row in other] != texts
        assert any(len(set(row)) > 1 for row in texts)  # sampling varies within a prompt

        greedy = chat_sampler.sample(CHAT_PROMPTS, n=2, temperatures=[0.0], seed=1)
        assert all(row[0].text == row[1].text and row[0].temperature == 0 for row in greedy)

        _with_max_new_tokens(chat_sampler, 4)
        cut = chat_sampler.sample(CHAT_PROMPTS[:1], n=2, temperatures=[1.0], seed=0)[0]
        assert [(s.n_tokens, s.finished, s.max_new_tokens) for s in cut] == [(4, False, 4)] * 2
    finally:
        _with_max_new_tokens(chat_sampler, 24)
