"""Data access for an iteration's generation step and the proxy: responses, pairs, suggestions, proxy labels,
proxy versions, and the label views that refits and quality metrics read."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, func, select

from storage.db import refresh_statistics
from storage.models import (
    NOT_PREFERENCE_ROUTES,
    Choice,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    PairStrategy,
    Prompt,
    ProxyVersion,
    Response,
    Route,
    Split,
    Suggestion,
)


@dataclass(frozen=True)
class ResponseIn:
    prompt_id: int
    text: str
    sampling: dict[str, Any]
    policy_id: int | None = None
    iteration_id: int | None = None
    proxy_reward: float | None = None
    proxy_version: int | None = None


@dataclass(frozen=True)
class PairIn:
    prompt_id: int
    response_a_id: int
    response_b_id: int
    strategy: PairStrategy
    route: Route
    overlap: int
    iteration_id: int | None = None
    # the proxy's suggestion (stored when agent is set)
    p_a: float | None = None
    uncertainty: float = 0.0
    reward_a: float | None = None
    reward_b: float | None = None
    agent: str | None = None


def train_prompts(*, session: Session, limit: int, seed: int = 0) -> list[Prompt]:
    """Active train-split prompts, the least sampled first (ties in a seeded order)."""
    sampled = (
        select(func.count(Response.id)).where(Response.prompt_id == Prompt.id).scalar_subquery()
    )
    # A seeded, portable shuffle: (id * a + seed) mod m, in 64-bit integers on every database
    # (PostgreSQL computes an `integer` column times a literal in 32 bits, and overflows).
    big = sa.BigInteger()
    shuffle = (
        sa.cast(Prompt.id, big) * sa.literal(2654435761, big) + sa.literal(seed, big)
    ) % sa.literal(4294967291, big)
    query = (
        select(Prompt)
        .where(Prompt.active, Prompt.split == Split.train)
        .order_by(sampled, shuffle)
        .limit(limit)
    )
    return list(session.exec(query))


def add_responses(*, session: Session, responses: list[ResponseIn]) -> list[Response]:
    rows = [Response(**vars(r)) for r in responses]
    session.add_all(rows)
    session.flush()
    return rows


def add_pairs(*, session: Session, pairs: list[PairIn]) -> list[Pair]:
    """Store pairs with their suggestion; a proxy-routed pair also gets its proxy label and is
    done at once."""
    rows = []
    for item in pairs:
        if item.route == Route.proxy and item.p_a is None:
            raise ValueError("a proxy-routed pair needs the proxy's p_a")
        pair = Pair(
            prompt_id=item.prompt_id,
            response_a_id=item.response_a_id,
            response_b_id=item.response_b_id,
            iteration_id=item.iteration_id,
            strategy=item.strategy,
            route=item.route,
            overlap=item.overlap,
            status=PairStatus.done if item.route == Route.proxy else PairStatus.queued,
        )
        session.add(pair)
        rows.append(pair)
    session.flush()
    for pair, item in zip(rows, pairs, strict=True):
        if item.agent is not None and item.p_a is not None:
            session.add(
                Suggestion(
                    pair_id=pair.id,
                    p_a=min(1.0, max(0.0, item.p_a)),
                    uncertainty=max(0.0, item.uncertainty),
                    reward_a=item.reward_a,
                    reward_b=item.reward_b,
                    agent=item.agent,
                )
            )
        if item.route == Route.proxy:
            choice = Choice.a if item.p_a >= 0.5 else Choice.b
            session.add(Label(pair_id=pair.id, source=LabelSource.proxy, choice=choice))
    session.flush()
    if rows:
        refresh_statistics(session, "pair")
    return rows


def human_routed_count(*, session: Session, iteration_id: int) -> int:
    """Pairs of an iteration sent to humans (human and audit routes)."""
    query = select(func.count(Pair.id)).where(
        Pair.iteration_id == iteration_id, Pair.route.in_([Route.human, Route.audit])
    )
    return session.exec(query).one()


def human_capacity(*, session: Session, iteration_id: int) -> int:
    """How many human labels an iteration's pairs can take (their overlap; proxy-only and
    discarded pairs take none)."""
    query = sa.select(sa.func.coalesce(sa.func.sum(Pair.overlap), 0)).where(
        Pair.iteration_id == iteration_id,
        Pair.route.in_([Route.human, Route.audit]),
        Pair.status != PairStatus.discarded,
    )
    return int(session.execute(query).scalar_one())


# proxy versions


def next_proxy_version(*, session: Session) -> int:
    return (session.exec(select(func.max(ProxyVersion.version))).one() or 0) + 1


def create_proxy_version(
    *,
    session: Session,
    version: int,
    kind: str,
    path: str | None,
    n_labels: int,
    metrics: dict[str, Any],
) -> ProxyVersion:
    row = ProxyVersion(version=version, kind=kind, path=path, n_labels=n_labels, metrics=metrics)
    session.add(row)
    session.flush()
    return row


def latest_proxy_version(*, session: Session, kind: str = "embedded") -> ProxyVersion | None:
    query = (
        select(ProxyVersion)
        .where(ProxyVersion.kind == kind)
        .order_by(ProxyVersion.version.desc())
        .limit(1)
    )
    return session.exec(query).first()


# label views


@dataclass(frozen=True)
class LabeledPair:
    label_id: int
    pair_id: int
    user_id: int | None
    source: LabelSource
    choice: Choice
    seconds: float | None
    route: Route
    prompt: str
    a: str
    b: str
    criteria: dict[str, str] | None = None  # the label's judgments per criterion


def labeled_pairs(
    *,
    session: Session,
    sources: tuple[LabelSource, ...],
    leave_out: Collection[int] = (),
) -> list[LabeledPair]:
    """Every label of the given sources with the texts it compared, oldest first (the proxy's
    selection of sources: `storage.preferences.proxy_labels`), but those of the users in
    `leave_out`. Votes on evaluation pairs and labels on gold pairs are no preference labels and
    are left out (storage/evaluation.py, storage/gold.py)."""
    ra, rb = sa.orm.aliased(Response), sa.orm.aliased(Response)
    query = (
        select(
            Label.id,
            Label.pair_id,
            Label.user_id,
            Label.source,
            Label.choice,
            Label.seconds,
            Pair.route,
            Prompt.text,
            ra.text,
            rb.text,
            Label.criteria,
        )
        .join(Pair, Pair.id == Label.pair_id)
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .join(ra, ra.id == Pair.response_a_id)
        .join(rb, rb.id == Pair.response_b_id)
        .where(Label.source.in_(sources), Pair.route.not_in(NOT_PREFERENCE_ROUTES))
        .order_by(Label.id)
    )
    if leave_out:
        query = query.where(
            sa.or_(Label.user_id.is_(None), Label.user_id.not_in(sorted(leave_out)))
        )
    return [LabeledPair(*row) for row in session.exec(query)]


def shared_labels(
    *, session: Session, user_id: int
) -> tuple[list[tuple[int, Choice, float | None]], list[tuple[int, Choice]]]:
    """(the user's human preference labels as (pair, choice, seconds), the other users' human
    labels on those pairs as (pair, choice)): one annotator's own figures."""
    mine = (
        sa.select(Label.pair_id, Label.choice, Label.seconds)
        .join(Pair, Pair.id == Label.pair_id)
        .where(
            Label.user_id == user_id,
            Label.source == LabelSource.human,
            Pair.route.not_in(NOT_PREFERENCE_ROUTES),
        )
    )
    own = [tuple(row) for row in session.execute(mine)]
    others_query = sa.select(Label.pair_id, Label.choice).where(
        Label.pair_id.in_(mine.with_only_columns(Label.pair_id).scalar_subquery()),
        Label.source == LabelSource.human,
        Label.user_id != user_id,
    )
    return own, [tuple(row) for row in session.execute(others_query)]


def latest_suggestions(*, session: Session, pair_ids: list[int]) -> dict[int, Suggestion]:
    """The newest suggestion of each pair."""
    out: dict[int, Suggestion] = {}
    for start in range(0, len(pair_ids), 500):
        chunk = pair_ids[start : start + 500]
        query = (
            select(Suggestion)
            .where(Suggestion.pair_id.in_(chunk))
            .order_by(Suggestion.created_at, Suggestion.id)
        )
        for row in session.exec(query):
            out[row.pair_id] = row
    return out
