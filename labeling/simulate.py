"""Simulated annotators: a judge under Bradley–Terry noise, labeling through the real queue.

Annotator `sim-i` claims a pair with `claim_next_pair` (evaluation pairs mixed in at
`eval.human_share`, as for people), scores the two texts it was shown with the
judge (s_left, s_right), picks left with probability σ((s_left − s_right) / B) (B = `noise`;
B = 0: always the higher score), calls it a tie when the scores are equal, and submits with
`submit_label`: the same path a person's click takes.

A judge is any `(prompt, response) -> float` on a scale of its own (a log-probability, a penalty,
a reward), so by default only the difference of two scores matters and no pair is both-bad;
`both_bad_below`, in the judge's units, labels a pair both-bad when both scores are below it.

A careless annotator (`careless`: {i: share}) answers at random on that share of its pairs, any of
the four answers (A, B, tie, both bad) as a careless click would be, and like the others the rest
of the time: what gold pairs are there to catch. Gold
pairs come at `labeling.gold_rate` as for people.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from sqlalchemy.engine import Engine

from storage import crud, queue
from storage.db import transaction
from storage.models import Role
from storage.settings import Settings


def ensure_annotators(*, engine: Engine, count: int) -> list[int]:
    """Ids of users sim-1..sim-count, created (as annotators without a password) when missing."""
    ids = []
    with transaction(engine) as session:
        for i in range(1, count + 1):
            name = f"sim-{i}"
            user = crud.get_user_by_name(session=session, name=name)
            if user is None:
                user = crud.create_user(
                    session=session, name=name, role=Role.annotator, password_hash=None
                )
            ids.append(user.id)
    return ids


def simulated_choice(
    s_left: float,
    s_right: float,
    *,
    noise: float,
    rng: random.Random,
    both_bad_below: float | None = None,
) -> str:
    if both_bad_below is not None and max(s_left, s_right) < both_bad_below:
        return "both_bad"
    if s_left == s_right:
        return "tie"
    if noise <= 0:
        return "left" if s_left > s_right else "right"
    z = (s_left - s_right) / noise
    p_left = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
    return "left" if rng.random() < p_left else "right"


def simulate_labels(
    *,
    engine: Engine,
    settings: Settings,
    annotators: int = 3,
    noise: float = 1.0,
    judge: str | Callable[[str, str], float] | None = None,
    max_labels: int | None = None,
    seed: int = 0,
    both_bad_below: float | None = None,
    careless: dict[int, float] | None = None,
) -> int:
    """Label queued pairs with `annotators` simulated users until the queue is empty for all of
    them or `max_labels` are in; returns the number of labels submitted. `judge`: a scoring
    function or its `module:callable` name (default: settings.proxy.judge). `both_bad_below`:
    label both-bad when both scores are below it (default None: never). `careless`: {i: share}
    makes sim-i answer at random on that share of its pairs."""
    from labeling.judges import load_judge

    score = judge if callable(judge) else load_judge(judge or settings.proxy.judge)
    users = ensure_annotators(engine=engine, count=annotators)
    careless = careless or {}
    if unknown := sorted(set(careless) - set(range(1, annotators + 1))):
        raise ValueError(f"careless: no annotator sim-{unknown[0]} among sim-1..sim-{annotators}")
    if bad := [share for share in careless.values() if not 0.0 <= share <= 1.0]:
        raise ValueError(f"careless: a share is within [0, 1] (got {bad[0]})")
    random_share = {users[i - 1]: share for i, share in careless.items()}
    rng = random.Random(seed)
    lease = settings.labeling.lease_seconds
    submitted = 0
    idle = set()
    turn = 0
    while len(idle) < len(users) and (max_labels is None or submitted < max_labels):
        user_id = users[turn % len(users)]
        turn += 1
        if user_id in idle:
            continue
        with transaction(engine) as session:
            claim = queue.claim_next_pair(
                session=session,
                user_id=user_id,
                lease_seconds=lease,
                eval_share=settings.eval.human_share,
                gold_rate=settings.labeling.gold_rate,
                rng=rng,
            )
        if claim is None:
            idle.add(user_id)
            continue
        choice = simulated_choice(
            score(claim.prompt, claim.left),
            score(claim.prompt, claim.right),
            noise=noise,
            rng=rng,
            both_bad_below=both_bad_below,
        )
        share = random_share.get(user_id, 0.0)
        if (
            share and rng.random() < share
        ):  # no draw otherwise: the others' labels stay as they were
            choice = rng.choice(queue.SHOWN_CHOICES)
        with transaction(engine) as session:
            queue.submit_label(
                session=session,
                user_id=user_id,
                pair_id=claim.pair_id,
                shown_choice=choice,
                seconds=round(rng.lognormvariate(2.3, 0.5), 2),  # about 10 s, a long tail
            )
        submitted += 1
    return submitted
