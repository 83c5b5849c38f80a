"""One pair as an admin reviews it: its texts, every label with who made it and why, its gold
answer. Read-only; the admin view and the API show it before an admin acts on the pair."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session

from storage.crud import NotFound
from storage.models import Choice, Gold, Label, Pair, Prompt, Response, User


@dataclass(frozen=True)
class LabelView:
    label_id: int
    annotator: str | None  # None: a proxy or seed label
    source: str
    choice: str  # about the pair's a and b
    reason: str | None
    seconds: float | None
    created_at: datetime


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
        LabelView(lid, name, str(source), str(Choice(choice)), reason, seconds, created)
        for lid, name, source, choice, reason, seconds, created in session.execute(
            sa.select(
                Label.id,
                User.name,
                Label.source,
                Label.choice,
                Label.reason,
                Label.seconds,
                Label.created_at,
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
