"""Evaluation pairs and their votes: two policy versions' replies to a held-out prompt, voted on
blind by annotators through the ordinary queue (storage/queue.py, route `eval`).

An evaluation pair is a `Pair` with route and strategy `eval`, no iteration and no suggestion; its
two `Response` rows carry the versions (`policy_id`) and, in `sampling`, the evaluation sample
slot they fill (`eval_slot`: the i-th reply of each version to that prompt). Its human labels are
the votes. They rate the versions (training/ratings.py) and never become preference data:
`storage.preferences` (DPO and the export), the proxy's labels and the quality figures leave
route `eval` out.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session

from storage.models import (
    Choice,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    PairStrategy,
    Policy,
    Prompt,
    Response,
    Route,
    Split,
    User,
)


@dataclass(frozen=True)
class EvalSlot:
    """One evaluation pair to queue: the `slot`-th reply of each version to a prompt."""

    prompt_id: int
    slot: int
    text_a: str  # from policy `a`
    text_b: str  # from policy `b`


def eval_prompts(*, session: Session, limit: int | None) -> list[tuple[int, str]]:
    """(id, text) of the first `limit` active held-out prompts in id order (None: all of them),
    from which the evaluation takes those that fit the policy (`training.evaluate.held_out_prompts`)."""
    query = (
        sa.select(Prompt.id, Prompt.text)
        .where(Prompt.split == Split.eval, Prompt.active)
        .order_by(Prompt.id)
        .limit(limit)
    )
    return [(pid, text) for pid, text in session.execute(query)]


_RA, _RB = aliased(Response), aliased(Response)
_PA, _PB = aliased(Policy), aliased(Policy)


def _eval_pairs():
    """Evaluation pairs with both replies' policies (pa, pb), discarded ones left out."""
    return (
        sa.select(Pair.id)
        .join(_RA, _RA.id == Pair.response_a_id)
        .join(_RB, _RB.id == Pair.response_b_id)
        .join(_PA, _PA.id == _RA.policy_id)
        .join(_PB, _PB.id == _RB.policy_id)
        .where(Pair.route == Route.eval, Pair.status != PairStatus.discarded)
    )


def queued_slots(*, session: Session, a_version: int, b_version: int) -> set[tuple[int, int]]:
    """(prompt_id, slot) of the evaluation pairs between two versions (either side), so that
    asking again queues only what is missing."""
    versions = {a_version, b_version}
    query = (
        _eval_pairs()
        .with_only_columns(Pair.prompt_id, _RA.sampling, _PA.version, _PB.version)
        .where(_PA.version.in_(versions), _PB.version.in_(versions))
    )
    return {
        (prompt_id, int((sampling or {}).get("eval_slot", 0)))
        for prompt_id, sampling, va, vb in session.execute(query)
        if {va, vb} == versions
    }


def add_eval_pairs(
    *,
    session: Session,
    a: Policy,
    b: Policy,
    slots: list[EvalSlot],
    sampling: dict[str, Any],
    rng: random.Random,
) -> int:
    """Queue an evaluation pair per slot (one vote each); which version is the pair's a is drawn
    from `rng`, and the page draws the shown order anew for each annotator. Flushes; returns the
    number of pairs."""
    if a.id == b.id:
        raise ValueError(f"an evaluation pair needs two versions (got v{a.version} twice)")
    for slot in slots:
        replies = [(a, slot.text_a), (b, slot.text_b)]
        if rng.random() < 0.5:
            replies.reverse()
        responses = [
            Response(
                prompt_id=slot.prompt_id,
                policy_id=policy.id,
                text=text,
                sampling={**sampling, "eval_slot": slot.slot},
            )
            for policy, text in replies
        ]
        session.add_all(responses)
        session.flush()
        session.add(
            Pair(
                prompt_id=slot.prompt_id,
                response_a_id=responses[0].id,
                response_b_id=responses[1].id,
                strategy=PairStrategy.eval,
                route=Route.eval,
                status=PairStatus.queued,
                overlap=1,
            )
        )
    session.flush()
    return len(slots)


@dataclass(frozen=True)
class VoteCount:
    version_a: int
    version_b: int
    choice: Choice
    n: int


def vote_counts(*, session: Session) -> list[VoteCount]:
    """Every vote on an evaluation pair, counted by (version a, version b, choice): what the
    Bradley–Terry fit reads, aggregated in SQL however many votes there are."""
    query = (
        _eval_pairs()
        .with_only_columns(_PA.version, _PB.version, Label.choice, sa.func.count(Label.id))
        .join(Label, Label.pair_id == Pair.id)
        .where(Label.source == LabelSource.human)
        .group_by(_PA.version, _PB.version, Label.choice)
        .order_by(_PA.version, _PB.version, Label.choice)
    )
    return [VoteCount(va, vb, Choice(choice), n) for va, vb, choice, n in session.execute(query)]


def eval_queue_counts(*, session: Session) -> dict[str, int]:
    """{queued: evaluation pairs waiting for a vote, votes: votes cast}."""
    queued = session.execute(
        sa.select(sa.func.count(Pair.id)).where(
            Pair.route == Route.eval, Pair.status == PairStatus.queued
        )
    ).scalar_one()
    votes = session.execute(
        sa.select(sa.func.count(Label.id))
        .join(Pair, Pair.id == Label.pair_id)
        .where(Pair.route == Route.eval, Label.source == LabelSource.human)
    ).scalar_one()
    return {"queued": queued, "votes": votes}


def open_slots(*, session: Session, a_version: int, b_version: int) -> int:
    """Evaluation pairs between two versions that may still get votes (queued, short of their
    overlap): the votes still to come."""
    versions = {a_version, b_version}
    query = (
        _eval_pairs()
        .with_only_columns(Pair.overlap - Pair.n_labels, _PA.version, _PB.version)
        .where(
            Pair.status == PairStatus.queued,
            _PA.version.in_(versions),
            _PB.version.in_(versions),
        )
    )
    return sum(left for left, va, vb in session.execute(query) if {va, vb} == versions)


@dataclass(frozen=True)
class Vote:
    label_id: int
    pair_id: int
    prompt: str
    messages: list[dict[str, str]] | None
    response_a: str
    response_b: str
    version_a: int
    version_b: int
    choice: str  # a | b | tie | both_bad, about the pair's a and b
    annotator: str | None
    seconds: float | None
    created_at: datetime


def iter_votes(*, session: Session, batch_size: int = 1000) -> Iterator[Vote]:
    """Every vote with the prompt and both replies, in label-id order, `batch_size` per query
    (keyset pages: memory stays flat)."""
    query = (
        _eval_pairs()
        .with_only_columns(
            Label.id,
            Pair.id,
            Prompt.text,
            Prompt.messages,
            _RA.text,
            _RB.text,
            _PA.version,
            _PB.version,
            Label.choice,
            User.name,
            Label.seconds,
            Label.created_at,
        )
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .join(Label, Label.pair_id == Pair.id)
        .outerjoin(User, User.id == Label.user_id)
        .where(Label.source == LabelSource.human)
        .order_by(Label.id)
        .limit(batch_size)
    )
    last = 0
    while True:
        rows = session.execute(query.where(Label.id > last)).all()
        for row in rows:
            yield Vote(*row[:8], str(Choice(row[8])), *row[9:])
        if len(rows) < batch_size:
            return
        last = rows[-1][0]
