"""Human evaluation (training/human_eval.py) without a model: evaluation pairs from cached samples
(the sampler faked: it is the expensive boundary), the leaderboard from simulated votes through
the queue, and the human gate's decisions. The gate with a real trained candidate is in
tests/training/test_human_gate.py."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from labeling.demo_task import gold_judge, reference_reply
from labeling.simulate import simulate_labels
from storage import crud, evaluation
from storage.db import transaction, upgrade
from storage.models import Audit, Pair, PolicyStatus, Response, Split
from storage.runtime import open_runtime
from tests.factories import make_prompts
from training import human_eval
from training.human_eval import check_human_gate, queue_eval_pairs


def _checkpoint(root: Path, version: int) -> str:
    """A directory that passes for a complete checkpoint (deploy checks the files exist)."""
    path = root / f"v{version}"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return str(path)


def two_versions(data_dir: Path, **eval_settings):
    """A runtime with v0 (retired) and v1 (deployed), checkpoints that pass for complete, 12
    held-out prompts and 3 train prompts."""
    rt = open_runtime(data_dir, eval=eval_settings)
    upgrade(rt.engine)
    root = data_dir.parent / "checkpoints"
    with transaction(rt.engine) as session:
        crud.create_policy(
            session=session, version=0, path=_checkpoint(root, 0), status=PolicyStatus.retired
        )
        crud.create_policy(
            session=session, version=1, path=_checkpoint(root, 1), status=PolicyStatus.deployed
        )
        make_prompts(session, 12, split=Split.eval)
        make_prompts(session, 3)  # train prompts: never evaluated on
    return rt


def fake_generate(monkeypatch) -> list[tuple[str, int]]:
    """Replace labeling.generation.generate (and the prompts' fit to the model's context, which
    needs its tokenizer); returns the list of generate's calls (version, prompts).
    Version N answers "vN: <prompt> #i", except that every version gives the same reply to the
    first held-out prompt."""
    calls = []

    def generate(path, prompts, *, n, **sampling):
        calls.append((Path(path).name, len(prompts)))
        first = prompts[0]
        return [
            [("same" if p == first else f"{Path(path).name}: {p} #{i}") for i in range(n)]
            for p in prompts
        ]

    monkeypatch.setattr("labeling.generation.generate", generate)
    # these checkpoints have no tokenizer: every prompt fits their (unknown) context window
    monkeypatch.setattr("labeling.generation._tokenizer_and_window", lambda path: (None, None))
    return calls


@pytest.fixture
def rt(tmp_path, database):
    rt = two_versions(
        tmp_path / "data",
        gate="human",
        n_prompts=6,
        samples_per_prompt=2,
        human_min_votes=8,
        bootstrap_samples=200,
    )
    yield rt
    rt.engine.dispose()


@pytest.fixture
def fake_sampler(monkeypatch):
    return fake_generate(monkeypatch)


def test_evaluation_pairs_are_blind_cached_and_added_only_once(rt, fake_sampler):
    first = queue_eval_pairs(
        engine=rt.engine, settings=rt.settings, a_version=1, b_version=0, n_prompts=4
    )
    assert fake_sampler == [("v1", 6), ("v0", 6)]  # the evaluation's 6 prompts, once a version
    identical = 2 if first["identical"] else 0  # the first prompt is among the 4 drawn, or not
    assert first == {
        "a": 1,
        "b": 0,
        "prompts": 4,
        "added": 8 - identical,
        "present": 0,
        "identical": identical,
    }
    again = queue_eval_pairs(
        engine=rt.engine, settings=rt.settings, a_version=0, b_version=1, n_prompts=4
    )
    assert again["added"] == 0 and again["present"] == 8 - identical
    more = queue_eval_pairs(
        engine=rt.engine, settings=rt.settings, a_version=1, b_version=0, n_prompts=6
    )
    assert more["added"] + first["added"] == 10  # 6 prompts x 2 samples, less the same ones
    assert len(fake_sampler) == 2  # all from the cache
    queue_eval_pairs(engine=rt.engine, settings=rt.settings, a_version=1, b_version=0, n_prompts=7)
    assert fake_sampler[2:] == [("v1", 7), ("v0", 7)]  # more prompts than the evaluation's

    with transaction(rt.engine, readonly=True) as session:
        pairs = list(session.exec(Pair.__table__.select()))
        responses = {r.id: r for r in session.exec(Response.__table__.select())}
        policy_version = {p.id: p.version for p in crud.list_policies(session=session)}
        audits = [a for a in session.exec(Audit.__table__.select()) if a.action == "eval.pairs"]
        eval_prompt_ids = {pid for pid, _ in evaluation.eval_prompts(session=session, limit=99)}
    assert len(pairs) == 12 and len(audits) == 4
    assert {p.prompt_id for p in pairs} <= eval_prompt_ids
    a_sides = [policy_version[responses[p.response_a_id].policy_id] for p in pairs]
    assert 0 < a_sides.count(1) < len(pairs)  # which version is "a" is drawn per pair
    for p in pairs:
        a, b = responses[p.response_a_id], responses[p.response_b_id]
        assert a.text != b.text and a.sampling["eval_slot"] == b.sampling["eval_slot"]
        assert {a.text.split(":")[0], b.text.split(":")[0]} == {"v0", "v1"}
    with pytest.raises(ValueError, match="two different versions"):
        queue_eval_pairs(engine=rt.engine, settings=rt.settings, a_version=1, b_version=1)
    with pytest.raises(crud.NotFound):
        queue_eval_pairs(engine=rt.engine, settings=rt.settings, a_version=1, b_version=9)


def _eval_pairs(rt, texts: dict[int, str], n: int = 12) -> None:
    """`n` evaluation pairs between v0 and v1 on the demo's support prompts: version v answers
    with the reference reply of quality texts[v]."""
    from labeling.demo_task import demo_prompts

    prompts = [text for text, split in demo_prompts() if split == "eval"][:n]
    with transaction(rt.engine) as session:
        crud.add_prompts(
            session=session, prompts=[crud.PromptIn(text=p, split=Split.eval) for p in prompts]
        )
        ids = {text: pid for pid, text in evaluation.eval_prompts(session=session, limit=999)}
        v0, v1 = (crud.get_policy(session=session, version=v) for v in (0, 1))
        slots = [
            evaluation.EvalSlot(
                ids[p], 0, reference_reply(p, texts[0]), reference_reply(p, texts[1])
            )
            for p in prompts
        ]
        evaluation.add_eval_pairs(
            session=session, a=v0, b=v1, slots=slots, sampling={}, rng=random.Random(1)
        )


def _vote(rt, max_labels: int | None = None) -> int:
    settings = rt.settings.model_copy(
        update={"eval": rt.settings.eval.model_copy(update={"human_share": 1.0})}
    )
    return simulate_labels(
        engine=rt.engine,
        settings=settings,
        annotators=3,
        noise=0.5,
        judge=gold_judge,
        max_labels=max_labels,
    )


def _pending(rt) -> None:
    human_eval.start_human_gate(engine=rt.engine, version=1, opponent=0)


def test_the_leaderboard_ranks_a_clearly_worse_version_below(rt):
    _eval_pairs(rt, {0: "worst", 1: "best"}, n=20)
    assert _vote(rt) == 20
    board = human_eval.human_leaderboard(engine=rt.engine, settings=rt.settings)
    best, worst = board.ratings
    assert (best.version, worst.version, board.anchor, board.votes) == (1, 0, 0, 20)
    assert best.lower > worst.upper  # intervals apart
    assert best.win_rate_vs_anchor >= 0.9 and board.meta["status"] == {1: "deployed", 0: "retired"}


def test_the_human_gate_rolls_back_a_deploy_the_votes_reject(rt):
    _eval_pairs(rt, {0: "best", 1: "worst"})
    _pending(rt)
    assert _vote(rt, max_labels=5) == 5
    waiting = check_human_gate(engine=rt.engine, settings=rt.settings)
    assert (waiting.decision, waiting.votes, waiting.needed) == ("pending", 5, 8)
    _vote(rt)
    decided = check_human_gate(engine=rt.engine, settings=rt.settings)
    assert decided.decision == "rolled_back" and decided.votes == 12
    assert decided.upper < 0.5 and decided.lower < decided.threshold == 0.5
    with transaction(rt.engine, readonly=True) as session:
        assert crud.deployed_policy(session=session).version == 0
        v1 = crud.get_policy(session=session, version=1)
        actions = [a.action for a in session.exec(Audit.__table__.select().order_by(Audit.id))]
    assert v1.status == PolicyStatus.rejected
    assert v1.metrics["human_gate"]["status"] == "rolled_back"
    assert actions[-2:] == ["policy.deploy", "policy.human_rollback"]
    assert check_human_gate(engine=rt.engine, settings=rt.settings) is None  # decided once


def test_the_human_gate_confirms_a_deploy_the_votes_prefer(rt):
    _eval_pairs(rt, {0: "worst", 1: "best"})
    _pending(rt)
    _vote(rt)
    auto = rt.settings.model_copy(
        update={"eval": rt.settings.eval.model_copy(update={"gate": "auto"})}
    )
    assert check_human_gate(engine=rt.engine, settings=auto) is None  # turned off: it waits
    decided = check_human_gate(engine=rt.engine, settings=rt.settings)
    assert decided.decision == "confirmed" and decided.lower >= 0.5
    with transaction(rt.engine, readonly=True) as session:
        v1 = crud.deployed_policy(session=session)
        last = session.exec(Audit.__table__.select().order_by(Audit.id.desc())).first()
    assert v1.version == 1 and v1.metrics["human_gate"]["status"] == "confirmed"
    assert last.action == "policy.human_confirm" and last.detail["votes"] == 12


def test_the_human_gate_decides_on_every_vote_there_can_be_when_fewer_than_the_minimum(rt):
    settings = rt.settings.model_copy(
        update={"eval": rt.settings.eval.model_copy(update={"human_min_votes": 500})}
    )
    _eval_pairs(rt, {0: "best", 1: "worst"}, n=6)
    _pending(rt)
    _vote(rt, max_labels=5)
    assert check_human_gate(engine=rt.engine, settings=settings).needed == 6  # one still open
    _vote(rt)
    assert check_human_gate(engine=rt.engine, settings=settings).decision == "rolled_back"
