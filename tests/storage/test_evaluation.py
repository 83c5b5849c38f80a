"""Evaluation pairs and their votes (storage/evaluation.py), on SQLite and PostgreSQL: voted on
through the ordinary queue, counted by version, and never preference data."""

from __future__ import annotations

import random

from storage import crud, evaluation, queue
from storage.db import transaction
from storage.models import Choice, Label, LabelSource, Pair, PairStatus, Route, Split
from tests.factories import make_pairs, make_policy, make_prompts, make_user


def _versions_and_eval_pairs(engine, n: int = 4) -> tuple[int, list[int]]:
    """v0 (deployed) and v1, `n` evaluation pairs between them on held-out prompts. Returns the
    annotator's id and the prompt ids."""
    with transaction(engine) as session:
        v0 = make_policy(session, version=0)
        v1 = make_policy(session, version=1, deployed=False)
        prompts = make_prompts(session, n, split=Split.eval)
        slots = [evaluation.EvalSlot(pid, 0, f"v0 says {pid}", f"v1 says {pid}") for pid in prompts]
        added = evaluation.add_eval_pairs(
            session=session, a=v0, b=v1, slots=slots, sampling={"seed": 0}, rng=random.Random(0)
        )
        assert added == n
        user = make_user(session).id
    return user, prompts


def _vote(engine, user_id: int, prefer: str, share: float = 1.0) -> Pair:
    """Claim the next pair and vote for the reply whose text starts with `prefer`."""
    with transaction(engine) as session:
        claim = queue.claim_next_pair(
            session=session, user_id=user_id, lease_seconds=60, eval_share=share
        )
        choice = "left" if claim.left.startswith(prefer) else "right"
        if prefer == "tie":
            choice = "tie"
        queue.submit_label(
            session=session, user_id=user_id, pair_id=claim.pair_id, shown_choice=choice
        )
        return session.get(Pair, claim.pair_id)


def test_votes_go_through_the_queue_and_count_by_version(engine):
    user, prompts = _versions_and_eval_pairs(engine, n=4)
    with transaction(engine, readonly=True) as session:
        pairs = list(session.exec(Pair.__table__.select()))
        assert evaluation.queued_slots(session=session, a_version=1, b_version=0) == {
            (pid, 0) for pid in prompts
        }
        assert evaluation.open_slots(session=session, a_version=0, b_version=1) == 4
    assert {p.route for p in pairs} == {Route.eval} and {p.strategy for p in pairs} == {"eval"}
    assert all(p.iteration_id is None and p.overlap == 1 for p in pairs)
    for prefer in ("v1", "v1", "v0", "tie"):
        pair = _vote(engine, user, prefer)
        assert pair.status == PairStatus.done
    with transaction(engine, readonly=True) as session:
        counts = evaluation.vote_counts(session=session)
        assert evaluation.eval_queue_counts(session=session) == {"queued": 0, "votes": 4}
        assert evaluation.open_slots(session=session, a_version=0, b_version=1) == 0
        votes = list(evaluation.iter_votes(session=session, batch_size=3))
    # however the sides were drawn, v1 won two, v0 one, and one tie
    by_winner: dict[str, int] = {}
    for c in counts:
        winner = {"a": f"v{c.version_a}", "b": f"v{c.version_b}"}.get(c.choice, "tie")
        by_winner[winner] = by_winner.get(winner, 0) + c.n
    assert by_winner == {"v1": 2, "v0": 1, "tie": 1}
    assert {(c.version_a, c.version_b) for c in counts} <= {(0, 1), (1, 0)}
    assert len(votes) == 4 and len({v.label_id for v in votes}) == 4  # keyset pages of 3
    for vote in votes:
        texts = {vote.version_a: vote.response_a, vote.version_b: vote.response_b}
        assert texts[0].startswith("v0 says") and texts[1].startswith("v1 says")
        assert vote.prompt.startswith("prompt") and vote.annotator.startswith("user")
        winner = {"a": vote.version_a, "b": vote.version_b}.get(vote.choice)
        assert winner is None or texts[winner].startswith(f"v{winner}")


def test_an_evaluation_vote_never_reaches_dpo_data_the_proxy_quality_or_the_export(
    engine, tmp_path
):
    """The same annotator labels preference pairs and votes on evaluation pairs: DPO's rows,
    the proxy's comparisons, the quality report, the export and the label counts hold the
    preference labels only."""
    from labeling.export import ExportFormat, export_preferences, load_export
    from labeling.quality import quality_report
    from storage.preferences import iter_preferences, proxy_labels

    user, _ = _versions_and_eval_pairs(engine, n=4)
    with transaction(engine) as session:
        iteration = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=2, human_budget=2
        )
        preference_ids = {p.id for p in make_pairs(session, 2, iteration_id=iteration.id)}
    for _ in range(6):  # share 0.5: the two kinds in turn
        _vote(engine, user, "v1", share=0.5)
    with transaction(engine, readonly=True) as session:
        eval_ids = {
            pair_id
            for (pair_id,) in session.exec(
                Pair.__table__.select()
                .with_only_columns(Pair.__table__.c.id)
                .where(Pair.__table__.c.route == "eval")
            )
        }
        labeled = {
            label.pair_id: label.choice
            for label in session.exec(Label.__table__.select())
            if label.source == LabelSource.human
        }
        assert set(labeled) == preference_ids | eval_ids  # everything got its label
        dpo_rows = list(iter_preferences(session=session))
        scoped_rows = list(iter_preferences(session=session, iterations=[0], with_seed=True))
        proxy_rows = proxy_labels(session=session)
        counts = crud.label_counts(session=session)
        in_iteration = crud.label_counts(session=session, iteration_id=iteration.id)
    # every label chose a side (the evaluation votes too): only the preference pairs are rows
    assert set(labeled.values()) <= {Choice.a, Choice.b}
    decided = {row.pair_id for row in dpo_rows}
    assert decided == {row.pair_id for row in scoped_rows} == preference_ids
    assert {row.pair_id for row in proxy_rows} == preference_ids
    assert counts == in_iteration == {"human": 2}
    assert quality_report(engine=engine)["human_labels"] == 2

    out = export_preferences(engine=engine, out=tmp_path / "prefs.jsonl", format="jsonl")
    exported = load_export(out.path, ExportFormat.jsonl)
    assert set(exported["pair_id"]) == decided and out.rows == len(decided)
    texts = set(exported["chosen"]) | set(exported["rejected"])
    assert not any(t.startswith(("v0 says", "v1 says")) for t in texts)
