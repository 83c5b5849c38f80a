import pytest

from labeling.demo_task import (
    TOPICS,
    demo_corpus,
    demo_prompts,
    gold_judge,
    reference_reply,
    topic_of,
)
from labeling.judges import DEFAULT_JUDGE, load_judge


def _prompt_for(topic: str) -> str:
    return next(text for text, _ in demo_prompts() if topic_of(text) == topic)


def test_demo_prompts_deterministic_split_and_unique():
    prompts = demo_prompts()
    assert prompts == demo_prompts()
    assert prompts != demo_prompts(seed=1)
    texts = [text for text, _ in prompts]
    assert len(texts) == len(set(texts))
    splits = [split for _, split in prompts]
    assert splits.count("train") == 400 and splits.count("eval") == 100


def test_every_prompt_has_its_topic():
    counts = {topic: 0 for topic in TOPICS}
    for text, _ in demo_prompts():
        counts[topic_of(text)] += 1
    assert all(count > 50 for count in counts.values()), counts
    assert topic_of("What is the capital of France?") is None


@pytest.mark.parametrize("topic", TOPICS)
def test_gold_judge_ranks_replies(topic):
    prompt = _prompt_for(topic)
    other = TOPICS[(TOPICS.index(topic) + 1) % len(TOPICS)]
    best = reference_reply(prompt, "best")
    other_customers = reference_reply(_prompt_for(other), "best")
    rude = f"What do you want now? That is not our problem. {best}"

    assert gold_judge(prompt, best) >= 9.5
    assert gold_judge(prompt, reference_reply(prompt, "worst")) <= 1.0
    assert gold_judge(prompt, best) > gold_judge(prompt, rude) + 3
    assert gold_judge(prompt, best) > gold_judge(prompt, other_customers) + 3


def test_gold_judge_penalizes_degenerate_text():
    prompt = _prompt_for("refund")
    best = reference_reply(prompt, "best")
    assert gold_judge(prompt, "") == 0.0
    assert gold_judge(prompt, "refund") <= 2.0
    assert gold_judge(prompt, " ".join([best] * 4)) < gold_judge(prompt, best) - 4
    assert gold_judge(prompt, "the the the the the the the the the") == 0.0
    assert 0.0 <= gold_judge("", "anything at all \x00 <|eos|>") <= 10.0


def test_gold_judge_is_deterministic_and_spread_over_the_corpus():
    corpus = demo_corpus(400)
    assert corpus == demo_corpus(400)
    scores = [gold_judge(p, r) for p, r in corpus]
    assert scores == [gold_judge(p, r) for p, r in corpus]
    assert min(scores) == 0.0 and max(scores) >= 9.5
    assert 3.0 < sum(scores) / len(scores) < 7.0


def test_corpus_never_contains_eval_prompts():
    eval_texts = {text for text, split in demo_prompts() if split == "eval"}
    assert not eval_texts & {prompt for prompt, _ in demo_corpus(2000)}


def test_load_judge():
    judge = load_judge(DEFAULT_JUDGE)
    assert judge is gold_judge
    for spec, message in [
        ("labeling.demo_task", "must look like"),
        ("labeling.no_such_module:judge", "cannot import"),
        ("labeling.demo_task:no_such_judge", "no attribute"),
        ("labeling.demo_task:TOPICS", "not callable"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            load_judge(spec)
        assert spec in str(info.value)
