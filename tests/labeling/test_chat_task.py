"""The chat demo's shipped data and its judge, the scoring rule that stands in for an annotator."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from labeling.chat_task import (
    SEED_PREFERENCES,
    chat_judge,
    chat_prompts,
    declines,
    repetition,
    request_kind,
)
from labeling.importing import read_preferences

GOOD = (
    "Photosynthesis is how plants turn light into food. Using energy from sunlight, they "
    "combine carbon dioxide from the air with water from the soil to make glucose, and they "
    "release oxygen as a by-product."
)
PROMPT = "Explain photosynthesis in two sentences."


def test_the_prompts_cover_six_kinds_with_a_held_out_eval_split():
    rows = chat_prompts()
    assert len(rows) >= 300
    assert len({text for text, _, _ in rows}) == len(rows)
    kinds = Counter(kind for _, kind, _ in rows)
    assert set(kinds) == {"explain", "write", "code", "advise", "summarize", "refuse"}
    eval_kinds = Counter(kind for _, kind, split in rows if split == "eval")
    assert sum(eval_kinds.values()) == 64 and set(eval_kinds) == set(kinds)


def test_the_seed_preferences_import_and_share_no_prompt_with_the_eval_split():
    seeds = read_preferences(SEED_PREFERENCES)
    assert len(seeds) == 64
    eval_prompts = {text for text, _, split in chat_prompts() if split == "eval"}
    raw = [json.loads(line) for line in SEED_PREFERENCES.read_text().splitlines()]
    assert not eval_prompts & {row["prompt"] for row in raw}


def test_the_judge_prefers_each_seed_preferences_chosen_reply_mostly():
    """The judge is a stand-in for taste: on the shipped seeds (written by people) it agrees with
    the chosen reply on most pairs."""
    raw = [json.loads(line) for line in SEED_PREFERENCES.read_text().splitlines()]
    agree = sum(
        chat_judge(r["prompt"], r["chosen"]) > chat_judge(r["prompt"], r["rejected"]) for r in raw
    )
    assert agree / len(raw) >= 0.8


@pytest.mark.parametrize(
    "worse, why",
    [
        (GOOD.rsplit(" ", 6)[0], "cut off mid-sentence"),
        ("Plants are green. " * 12, "repeats itself"),
        ("The stock market closed higher today as investors bought bank shares.", "off topic"),
        ("Light.", "too short"),
        (" ".join([GOOD] * 5).replace(". ", ", and so on, "), "rambles past 300 words"),
    ],
)
def test_the_judge_scores_a_flawed_reply_below_a_good_one(worse, why):
    assert chat_judge(PROMPT, worse) < chat_judge(PROMPT, GOOD) - 1.0, why


def test_the_judge_is_bounded_deterministic_and_zero_for_nothing():
    assert chat_judge(PROMPT, "") == 0.0 and chat_judge(PROMPT, "   ") == 0.0
    score = chat_judge(PROMPT, GOOD)
    assert 7.0 <= score <= 10.0 and chat_judge(PROMPT, GOOD) == score


def test_repetition_counts_repeated_word_trigrams():
    assert repetition("one two three four five") == 0.0
    assert repetition("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert repetition("") == 0.0


@pytest.mark.parametrize(
    "reply, declined",
    [
        ("I can't help with that.", True),
        ("I'm sorry, but I cannot assist with this request.", True),
        ("  I won't write a fake review, but I can help you ask real customers.", True),
        ("I am unable to do that.", True),
        ("Photosynthesis is how plants make food.", False),
        ("I can help with that! Here is a plan.", False),
        ("I cannot stress enough how useful this is.", False),
    ],
)
def test_declines_reads_how_a_reply_opens(reply, declined):
    assert declines(reply) is declined


def test_the_judge_wants_a_refusal_where_a_good_assistant_declines_and_nowhere_else():
    harmful = next(text for text, kind, split in chat_prompts() if kind == "refuse")
    benign = next(text for text, kind, split in chat_prompts() if kind == "explain")
    refusal = (
        "I can't help with that: it would hurt someone else. If you tell me more about what "
        "you need, I can suggest a legitimate way to get it."
    )
    compliance = f"Sure. Here is how: {harmful} First, wait until nobody is around, then act fast."
    assert request_kind(harmful) == "refuse" and request_kind(benign) == "explain"
    assert chat_judge(harmful, refusal) > chat_judge(harmful, compliance) + 3.0
    helpful = "It works because " + benign.lower().rstrip("?.") + " follows from simple physics."
    assert chat_judge(benign, refusal) < chat_judge(benign, helpful) - 1.0
    # a prompt prefloop did not ship has no known kind: the reply's relevance alone counts
    assert request_kind("How do I tie a bowline knot?") is None
