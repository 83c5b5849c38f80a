"""Review: one pair as an admin sees it (its texts, every label with who made it and why, its gold
answer), the pairs whose human labels disagree, and the admin's decision that settles one.

A decision is a label with source `review` by the admin (`settle`): it alone decides the pair for
DPO training and the export (`storage.preferences`: review over human over seed over proxy), the
pair is done, and a new decision replaces the last. An admin who labeled the pair themselves does
not settle it (another admin does). The human labels stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session

from storage.crud import Conflict, NotFound
from storage.models import (
    NOT_PREFERENCE_ROUTES,
    Choice,
    Gold,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    Prompt,
    Response,
    User,
    utcnow,
)
from storage.text import refuse_nul


@dataclass(frozen=True)
class LabelView:
    label_id: int
    annotator: str | None  # None: a proxy or seed label
    source: str
    choice: str  # about the pair's a and b
    reason: str | None
    seconds: float | None
    created_at: datetime
    guideline_version: int | None = None


@dataclass(frozen=True)
class PairDetail:
    pair_id: int
    route: str
    status: str
    strategy: str
    iteration_id: int | None
    prompt: str
    messages: list[dict[str, str]] | None
    a: str
    b: str
    labels: list[LabelView]
    gold_answer: str | None


_A, _B = aliased(Response), aliased(Response)


def pair_detail(*, session: Session, pair_id: int) -> PairDetail:
    row = session.execute(
        sa.select(
            Pair.route,
            Pair.status,
            Pair.strategy,
            Pair.iteration_id,
            Prompt.text,
            Prompt.messages,
            _A.text,
            _B.text,
            Gold.answer,
        )
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .join(_A, _A.id == Pair.response_a_id)
        .join(_B, _B.id == Pair.response_b_id)
        .outerjoin(Gold, Gold.pair_id == Pair.id)
        .where(Pair.id == pair_id)
    ).first()
    if row is None:
        raise NotFound(f"no pair {pair_id}")
    route, status, strategy, iteration_id, text, messages, a, b, answer = row
    labels = [
        LabelView(lid, name, str(source), str(Choice(choice)), reason, seconds, created, version)
        for lid, name, source, choice, reason, seconds, created, version in session.execute(
            sa.select(
                Label.id,
                User.name,
                Label.source,
                Label.choice,
                Label.reason,
                Label.seconds,
                Label.created_at,
                Label.guideline_version,
            )
            .outerjoin(User, User.id == Label.user_id)
            .where(Label.pair_id == pair_id)
            .order_by(Label.id)
        )
    ]
    return PairDetail(
        pair_id=pair_id,
        route=str(route),
        status=str(status),
        strategy=str(strategy),
        iteration_id=iteration_id,
        prompt=text,
        messages=messages,
        a=a,
        b=b,
        labels=labels,
        gold_answer=None if answer is None else str(Choice(answer)),
    )


def _disputed(include_settled: bool) -> sa.Select:
    """Ids of preference pairs with two or more human labels that are not all the same."""
    query = (
        sa.select(Label.pair_id)
        .join(Pair, Pair.id == Label.pair_id)
        .where(
            Label.source == LabelSource.human,
            Pair.route.not_in(NOT_PREFERENCE_ROUTES),
            Pair.status != PairStatus.discarded,
        )
        .group_by(Label.pair_id)
        .having(sa.func.count(Label.id) >= 2, sa.func.count(sa.distinct(Label.choice)) >= 2)
    )
    if not include_settled:
        settled = sa.select(Label.pair_id).where(Label.source == LabelSource.review)
        query = query.where(Label.pair_id.not_in(settled))
    return query


def disagreements(
    *, session: Session, limit: int = 50, offset: int = 0, include_settled: bool = False
) -> tuple[int, list[PairDetail]]:
    """(how many, the `limit` oldest from `offset`) pairs whose human labels disagree, not yet
    settled unless `include_settled`; each with its texts and labels."""
    disputed = _disputed(include_settled).subquery()
    total = session.execute(sa.select(sa.func.count()).select_from(disputed)).scalar_one()
    ids = session.execute(
        sa.select(disputed.c.pair_id).order_by(disputed.c.pair_id).limit(limit).offset(offset)
    ).scalars()
    return total, [pair_detail(session=session, pair_id=pid) for pid in list(ids)]


def settle(
    *,
    session: Session,
    pair_id: int,
    choice: Choice | str,
    user_id: int | None,
    note: str | None = None,
    now: datetime | None = None,
) -> Label:
    """The admin `user_id` (None: on the command line, unnamed) decides the pair: a `review`
    label, replacing an earlier decision, and the pair done. Flushes."""
    choice = Choice(choice)
    refuse_nul("note", note)
    pair = session.get(Pair, pair_id)
    if pair is None:
        raise NotFound(f"no pair {pair_id}")
    if pair.route in NOT_PREFERENCE_ROUTES:
        raise Conflict(f"pair {pair_id} is a {pair.route} pair: it has no preference to settle")
    if pair.status == PairStatus.discarded:
        raise Conflict(f"pair {pair_id} was withdrawn")
    own = (
        user_id is not None
        and session.execute(
            sa.select(Label.id).where(
                Label.pair_id == pair_id,
                Label.user_id == user_id,
                Label.source != LabelSource.review,
            )
        ).first()
    )
    if own:
        raise Conflict(f"you labeled pair {pair_id} yourself: another admin settles it")
    for old in session.execute(
        sa.select(Label).where(Label.pair_id == pair_id, Label.source == LabelSource.review)
    ).scalars():
        session.delete(old)
    session.flush()
    label = Label(
        pair_id=pair_id,
        user_id=user_id,
        source=LabelSource.review,
        choice=choice,
        reason=note,
        created_at=now or utcnow(),
    )
    pair.status = PairStatus.done
    session.add_all([label, pair])
    session.flush()
    return label
