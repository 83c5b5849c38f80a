"""Read-only figures for the admin view: the timeline, label rates, agreement, training curves.

Plain queries over a caller's session, small results (aggregated in SQL or bounded by a limit).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from storage.models import (
    NOT_PREFERENCE_ROUTES,
    Choice,
    Job,
    Label,
    LabelSource,
    Pair,
    Suggestion,
    utcnow,
)


def labels_per_hour(
    *, session: Session, hours: int = 48, now: datetime | None = None
) -> list[dict[str, Any]]:
    """[{hour, source, labels}] for the last `hours` hours (hours without labels are absent);
    votes on evaluation pairs count as source "eval", labels on gold pairs as "gold"."""
    since = (now or utcnow()) - timedelta(hours=hours)
    rows = session.exec(
        select(Label.created_at, Label.source, Pair.route)
        .join(Pair, Pair.id == Label.pair_id)
        .where(Label.created_at >= since)
    ).all()
    counts: dict[tuple[datetime, str], int] = defaultdict(int)
    for created, source, route in rows:
        kind = str(route) if route in NOT_PREFERENCE_ROUTES else str(source)
        counts[(created.replace(minute=0, second=0, microsecond=0), kind)] += 1
    return [
        {"hour": hour, "source": source, "labels": n}
        for (hour, source), n in sorted(counts.items())
    ]


def human_labels_per_iteration(*, session: Session) -> dict[int, int]:
    """{iteration_id: human labels on its pairs}."""
    query = (
        select(Pair.iteration_id, sa.func.count(Label.id))
        .join(Pair, Pair.id == Label.pair_id)
        .where(
            Label.source == LabelSource.human,
            Pair.iteration_id.is_not(None),
            Pair.route.not_in(NOT_PREFERENCE_ROUTES),
        )
        .group_by(Pair.iteration_id)
    )
    return {iteration_id: n for iteration_id, n in session.exec(query)}


def recent_jobs(*, session: Session, limit: int = 20) -> list[Job]:
    return list(session.exec(select(Job).order_by(Job.id.desc()).limit(limit)))


def _preferred(choice: Choice) -> str:
    return str(choice) if choice in (Choice.a, Choice.b) else "none"


def agreement_per_iteration(*, session: Session) -> list[dict[str, Any]]:
    """[{iteration_id, kind, agreement, n}] with kind "human-human" (pairs of humans on the same
    pair choosing the same) and "human-proxy" (a human choosing the side the proxy's P favoured).
    Ties and both-bad count as their own answer. Votes on evaluation pairs and labels on gold
    pairs are left out."""
    labels = session.exec(
        select(Pair.iteration_id, Label.pair_id, Label.choice)
        .join(Pair, Pair.id == Label.pair_id)
        .where(Label.source == LabelSource.human, Pair.route.not_in(NOT_PREFERENCE_ROUTES))
    ).all()
    suggestions = dict(session.exec(select(Suggestion.pair_id, Suggestion.p_a)).all())
    by_pair: dict[int, list[str]] = defaultdict(list)
    iteration_of: dict[int, int | None] = {}
    for iteration_id, pair_id, choice in labels:
        by_pair[pair_id].append(_preferred(Choice(choice)))
        iteration_of[pair_id] = iteration_id
    tally: dict[tuple[int | None, str], list[int]] = defaultdict(lambda: [0, 0])
    for pair_id, choices in by_pair.items():
        iteration_id = iteration_of[pair_id]
        for i in range(len(choices)):
            for j in range(i + 1, len(choices)):
                t = tally[(iteration_id, "human-human")]
                t[0] += choices[i] == choices[j]
                t[1] += 1
        if pair_id in suggestions:
            proxy = "a" if suggestions[pair_id] >= 0.5 else "b"
            t = tally[(iteration_id, "human-proxy")]
            t[0] += sum(c == proxy for c in choices)
            t[1] += len(choices)
    return [
        {"iteration_id": it, "kind": kind, "agreement": agree / n, "n": n}
        for (it, kind), (agree, n) in sorted(
            tally.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])
        )
        if n
    ]
