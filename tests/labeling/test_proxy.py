"""Proxy preference models; the embedded one learns the demo's gold preference from labels."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from sqlmodel import select

from labeling import demo_task as demo
from labeling import proxy as px
from storage import crud, pairs
from storage.db import transaction
from storage.models import Choice, Label, LabelSource, PairStrategy, Prompt, Route, Split
from storage.settings import ProxySettings, Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def demo_comparisons(split: str, n: int, seed: int) -> list[px.Comparison]:
    """Pairs of two random-quality demo replies, labeled by the gold judge (ties left out)."""
    prompts = [text for text, s in demo.demo_prompts(0) if s == split]
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        prompt = rng.choice(prompts)
        a = demo.reference_reply(prompt, "random", seed=rng.randrange(10**9))
        b = demo.reference_reply(prompt, "random", seed=rng.randrange(10**9))
        ga, gb = demo.gold_judge(prompt, a), demo.gold_judge(prompt, b)
        if a != b and ga != gb:
            out.append(px.Comparison(prompt, a, b, 1.0 if ga > gb else 0.0))
    return out


def store_labels(engine, comparisons):
    """Each comparison as a stored pair with one human label."""
    with transaction(engine) as session:
        user = crud.get_user_by_name(session=session, name="rater") or crud.create_user(
            session=session, name="rater", role="annotator", password_hash=None
        )
        crud.add_prompts(
            session=session,
            prompts=[crud.PromptIn(text=c.prompt, split=Split.train) for c in comparisons],
        )
        ids = dict(session.exec(select(Prompt.text, Prompt.id)).all())
        for c in comparisons:
            ra, rb = pairs.add_responses(
                session=session,
                responses=[
                    pairs.ResponseIn(prompt_id=ids[c.prompt], text=c.a, sampling={}),
                    pairs.ResponseIn(prompt_id=ids[c.prompt], text=c.b, sampling={}),
                ],
            )
            [pair] = pairs.add_pairs(
                session=session,
                pairs=[
                    pairs.PairIn(
                        prompt_id=ids[c.prompt],
                        response_a_id=ra.id,
                        response_b_id=rb.id,
                        strategy=PairStrategy.random,
                        route=Route.human,
                        overlap=1,
                    )
                ],
            )
            choice = Choice.a if c.target == 1.0 else Choice.b
            session.add(Label(pair_id=pair.id, user_id=user.id, choice=choice))
        # a proxy label must never train the proxy
        session.add(Label(pair_id=pair.id, source=LabelSource.proxy, choice=Choice.a))


def accuracy(proxy, comparisons) -> float:
    p, _ = px.compare(
        proxy,
        [c.prompt for c in comparisons],
        [c.a for c in comparisons],
        [c.b for c in comparisons],
    )
    return float(np.mean((p > 0.5) == (np.array([c.target for c in comparisons]) > 0.5)))


@pytest.fixture(scope="module")
def heldout():
    return demo_comparisons("eval", 200, seed=99)


def test_unfitted_proxy_has_no_opinion(sqlite_engine, tmp_path):
    settings = Settings(data_dir=tmp_path)
    proxy = px.load_proxy(engine=sqlite_engine, settings=settings)
    assert not proxy.fitted and proxy.agent == "proxy:unfitted"
    [s] = proxy.score_groups(["p"], [["a", "b"]])
    assert (s.p(0, 1), s.uncertainty(0, 1)) == (0.5, 0.0)
    assert px.refit_proxy(engine=sqlite_engine, settings=settings) is None  # no labels yet


@pytest.mark.slow
def test_embedded_proxy_learns_the_demo_preference(sqlite_engine, tmp_path, heldout):
    settings = Settings(data_dir=tmp_path)
    train = demo_comparisons("train", 300, seed=1)
    store_labels(sqlite_engine, train[:100])
    v1 = px.refit_proxy(engine=sqlite_engine, settings=settings)
    assert (v1.version, v1.n_labels) == (1, 100)
    assert (tmp_path / "proxy" / "v1" / "heads.npz").exists()
    acc_100 = accuracy(px.load_proxy(engine=sqlite_engine, settings=settings), heldout)

    store_labels(sqlite_engine, train[100:])  # 200 more labels, then refit
    v2 = px.refit_proxy(engine=sqlite_engine, settings=settings)
    assert (v2.version, v2.n_labels) == (2, 300)
    proxy = px.load_proxy(engine=sqlite_engine, settings=settings)
    assert proxy.agent == "proxy:v2"
    acc_300 = accuracy(proxy, heldout)
    print(f"held-out pairwise accuracy: 100 labels {acc_100:.3f}, 300 labels {acc_300:.3f}")
    assert acc_300 >= 0.8
    # the ensemble disagrees somewhere, and its P is antisymmetric
    [s] = proxy.score_groups([heldout[0].prompt], [[heldout[0].a, heldout[0].b, heldout[1].a]])
    assert s.uncertainty(0, 1) > 0 and s.bonus.shape == (3, 3)
    assert s.p(0, 1) == pytest.approx(1 - s.p(1, 0))
    # the flat scorer agrees with the groups
    flat = proxy.score([heldout[0].prompt] * 2, [heldout[0].a, heldout[0].b])
    assert flat == pytest.approx(s.rewards[:2])
    # the customer's own ticket number against another one, in otherwise equal replies: the
    # embeddings hardly differ, the surface features do
    prompts = [text for text, split in demo.demo_prompts(0) if split == "eval"]
    numbered = [(p, demo._parse(p)) for p in prompts if demo._parse(p).number][:20]
    right = [demo.reference_reply(p, "best") for p, _ in numbered]
    wrong = [
        r.replace(t.number, str(int(t.number) + 1))
        for r, (_, t) in zip(right, numbered, strict=True)
    ]
    assert all(w != r for w, r in zip(wrong, right, strict=True))
    p_right, _ = px.compare(proxy, [p for p, _ in numbered], right, wrong)
    print(f"P(own ticket number > another): mean {p_right.mean():.3f}, min {p_right.min():.3f}")
    # (with the surface weights zeroed: mean 0.51, min 0.47)
    assert p_right.min() > 0.5 and p_right.mean() > 0.58


def test_surface_features_count_specifics_the_prompt_has_and_words():
    reply = "Hi Maria, ticket 48213 is closed.\n- Thanks to Anna at Acme.\nBest, Sam"
    assert px.specifics(reply) == ["Maria", "48213", "Anna", "Acme", "Sam"]  # not Hi, Thanks, Best
    prompt = "Maria here: is ticket 48213 closed yet?"
    [s] = px.surface([prompt], [reply])
    # Maria and 48213 found; Anna, Acme, Sam not; 14 words
    assert s == pytest.approx(np.log1p([2, 3, 14]))
    [s] = px.surface([prompt], ["No numbers or names here."])
    assert s == pytest.approx(np.log1p([0, 0, 5]))


def test_a_proxy_saved_before_the_surface_features_still_scores(tmp_path):
    """A proxy fitted by an earlier prefloop loads with no weight on the surface features, and
    scores pairs as it did."""
    embedder = px.get_embedder()
    rng = np.random.default_rng(0)
    width = embedder.dim + 1
    old = px.EmbeddedProxy(
        heads=rng.normal(size=(3, width)),
        theta=rng.normal(size=width),
        covariance=np.eye(width),
        version=4,
    )
    old.save(tmp_path)
    meta = json.loads((tmp_path / "proxy.json").read_text())
    (tmp_path / "proxy.json").write_text(
        json.dumps({**meta, "features": px.FEATURES_WITHOUT_SURFACE})
    )
    loaded = px.EmbeddedProxy.load(tmp_path)
    assert loaded.theta.shape == (width + px.N_SURFACE,)
    prompt, a, b = "Ticket 48213 from Maria", "Hi Maria, 48213 is fixed.", "Hi Tom, 99999 is fixed."
    e_x, e_y = embedder([prompt]), embedder([a, b])
    phi_old = np.concatenate([e_y, 4.0 * (e_y @ e_x.T)], axis=1)  # the old features
    expected = 1 / (1 + np.exp(-(phi_old[0] - phi_old[1]) @ old.theta))
    [scores] = loaded.score_groups([prompt], [[a, b]])
    assert scores.p(0, 1) == pytest.approx(expected, rel=1e-4)
    (tmp_path / "proxy.json").write_text(json.dumps({**meta, "features": "something else"}))
    with pytest.raises(ValueError, match="refit-proxy"):
        px.EmbeddedProxy.load(tmp_path)


def test_fit_moves_the_heads_toward_the_labels():
    rng = np.random.default_rng(0)
    theta_true = rng.normal(size=16)
    diffs = rng.normal(size=(400, 16))
    targets = (diffs @ theta_true > 0).astype(float)
    theta = px.fit_head(diffs, targets, l2=0.1)
    assert np.mean((diffs @ theta > 0) == (targets > 0.5)) > 0.95
    cos = theta @ theta_true / np.linalg.norm(theta) / np.linalg.norm(theta_true)
    assert cos > 0.9


def test_judge_proxy(tmp_path):
    settings = Settings(data_dir=tmp_path, proxy=ProxySettings(kind="judge"))
    proxy = px.load_proxy(settings=settings)
    prompt = [t for t, _ in demo.demo_prompts(0)][0]
    best, worst = demo.reference_reply(prompt, "best"), demo.reference_reply(prompt, "worst")
    p, u = px.compare(proxy, [prompt], [best], [worst])
    assert p[0] > 0.99 and u[0] == 0.0
    assert proxy.agent == "judge:labeling.demo_task:gold_judge"


def test_reward_model_proxy(tmp_path, demo_policy_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(demo_policy_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    settings = Settings(
        data_dir=tmp_path, proxy=ProxySettings(kind="reward_model", path=str(tmp_path / "rm"))
    )
    proxy = px.load_proxy(settings=settings)
    [s] = proxy.score_groups(["hello"], [["a reply", "another reply", "a reply"]])
    assert s.rewards.shape == (3,) and s.rewards[0] == pytest.approx(s.rewards[2], abs=1e-5)
    assert s.p(0, 1) == pytest.approx(1 / (1 + np.exp(-(s.rewards[0] - s.rewards[1]))))
    assert proxy.agent == "rm:rm"
