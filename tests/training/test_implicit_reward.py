"""The DPO implicit reward on held-out pairs (training.implicit_reward): pairs ranked by a judge,
the reward's arithmetic, and batched log-probabilities that equal one sequence at a time, with a
chat template (SmolLM2) and without one."""

from __future__ import annotations

import pytest

from tests.training.conftest import tiny_causal_lm
from training.implicit_reward import (
    _token_ids,
    completion_logprobs,
    implicit_reward,
    judged_pairs,
    policy_logprobs,
)


def test_judged_pairs_put_the_judges_choice_first_and_leave_ties_out():
    def judge(prompt, reply):
        return len(reply)

    prompts = ["p", "q"]
    replies = [["short", "much longer", "tie1", "tie2"], ["xx", "x", "odd one"]]
    # every two of a prompt's replies, the longer chosen; (tie1, tie2) tied, left out
    assert judged_pairs(prompts, replies, judge) == [
        ("p", "much longer", "short"),
        ("p", "short", "tie1"),
        ("p", "short", "tie2"),
        ("p", "much longer", "tie1"),
        ("p", "much longer", "tie2"),
        ("q", "xx", "x"),
        ("q", "odd one", "xx"),
        ("q", "odd one", "x"),
    ]
    # gaps of 6 and 7 count at min_gap 6; gaps of 1 and 5 do not
    assert judged_pairs(prompts, replies, judge, min_gap=6) == [
        ("p", "much longer", "short"),
        ("p", "much longer", "tie1"),
        ("p", "much longer", "tie2"),
        ("q", "odd one", "x"),
    ]


def test_implicit_reward_is_beta_times_the_log_ratio_margin():
    # two pairs: chosen then rejected log-probabilities under the policy and the reference
    policy = [-10.0, -20.0, -14.0, -18.0]
    reference = [-12.0, -19.0, -12.0, -20.0]
    # pair 0: (2) - (-2) = 4; pair 1: (-1) - (2) = -3
    result = implicit_reward(policy, reference, beta=0.5)
    assert result == {"n_pairs": 2, "accuracy": 0.5, "margin": 0.25}
    with pytest.raises(ValueError, match="as many of each"):
        implicit_reward(policy, reference[:2], beta=0.1)
    with pytest.raises(ValueError, match="as many of each"):
        implicit_reward([], [], beta=0.1)


def _one_at_a_time(model, tokenizer, prompts, replies, max_length):
    return [
        completion_logprobs(model, tokenizer, [p], [r], max_length=max_length, batch_size=1)[0]
        for p, r in zip(prompts, replies, strict=True)
    ]


PROMPTS = ["hello world", "how are you today?", "hello", "world, how are you?"]
REPLIES = ["hello", "how are you today? hello world, how are you today?", "world", "you"]


def test_batched_log_probs_equal_one_at_a_time_without_a_chat_template(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = tiny_causal_lm(tmp_path / "lm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids, head = _token_ids(tokenizer, "hello world", "hello")
    # plain text: the prompt, then the reply and the end-of-sequence token
    assert tokenizer.decode(ids[head:]) == "hello</s>"
    batched = completion_logprobs(model, tokenizer, PROMPTS, REPLIES, max_length=64, batch_size=4)
    single = _one_at_a_time(model, tokenizer, PROMPTS, REPLIES, 64)
    assert batched == pytest.approx(single, abs=1e-4)
    assert all(value < 0 for value in batched)
    # cut at max_length: fewer reply tokens count, so the sum is larger (less negative)
    cut = completion_logprobs(model, tokenizer, PROMPTS[1:2], REPLIES[1:2], max_length=head + 4)
    assert cut[0] > batched[1]


def test_policy_logprobs_scores_a_reply_in_several_pairs_once_and_returns_each_pairs(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    path = tiny_causal_lm(tmp_path / "lm")
    # "hello" is in three pairs (chosen twice, rejected once): scored once, returned three times
    triples = [("hi", "hello", "world"), ("hi", "hello", "you"), ("hi", "you", "hello")]
    logps = policy_logprobs(str(path), triples, max_length=64)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = _one_at_a_time(
        model,
        tokenizer,
        ["hi"] * 6,
        ["hello", "hello", "you", "world", "you", "hello"],  # the chosen, then the rejected
        64,
    )
    assert logps == pytest.approx(expected, abs=1e-4)
    assert len(set(logps)) == 3  # three replies, three values, in six places


@pytest.mark.slow
def test_batched_log_probs_equal_one_at_a_time_through_smollm2s_chat_template(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, torch_dtype=torch.float32).eval()
    ids, head = _token_ids(tokenizer, "What is the capital of France?", "Paris.")
    # the assistant's turn, closed by the end-of-turn token the model learned to stop at
    assert tokenizer.decode(ids[head:]).startswith("Paris.<|im_end|>")
    prompts = ["What is the capital of France?"] * 2 + ["Name a colour."]
    replies = ["The capital of France is Paris.", "The capital of France is Berlin.", "Blue."]
    batched = completion_logprobs(model, tokenizer, prompts, replies, max_length=128)
    assert batched == pytest.approx(
        _one_at_a_time(model, tokenizer, prompts, replies, 128), abs=1e-3
    )
    # the real model knows its geography: a low-noise check that the right tokens are scored
    assert batched[0] > batched[1] + 2.0
