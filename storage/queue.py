"""The annotation queue: claim a pair, label it, skip it. Only these functions move pairs through it.

A claim is an `Assignment` row (unique per pair and user) with a lease. A pair can be claimed while
its human labels plus its active, unexpired leases are fewer than its overlap; a lease that expires
gives its slot back (`release_expired` only tidies the rows, the counting never trusts them). A user
never gets a pair they hold, labeled, skipped or let expire.

Atomicity:
- SQLite: every write transaction is BEGIN IMMEDIATE (storage/db.py), so transactions run one at a
  time; the claim is still one statement, ``INSERT INTO assignment ... SELECT ... RETURNING``.
- PostgreSQL: the user's row is locked first (one claim per user at a time: a double click or two
  tabs get the same pair), then the next candidate pair with ``FOR NO KEY UPDATE SKIP LOCKED``;
  once the lock is held its free slots are counted again in a new statement (READ COMMITTED gives
  each statement a fresh snapshot), since a claim committed between our snapshot and our lock is
  invisible to the first count.

Submitting is idempotent: the assignment row is locked, and a second submit for the same pair and
user returns the stored label unchanged. The A/B order shown is decided here, stored on the
assignment, and used to translate "left"/"right" back to the pair's a/b: the client's idea of the
order is never trusted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from storage.crud import Conflict, NotFound
from storage.db import is_sqlite, run_core
from storage.models import (
    QUEUED_FOR_HUMANS_SQL,
    Assignment,
    AssignmentStatus,
    Choice,
    Label,
    LabelSource,
    Pair,
    PairStatus,
    Prompt,
    Response,
    Route,
    Suggestion,
    User,
    utcnow,
)

ShownChoice = Literal["left", "right", "tie", "both_bad"]
SHOWN_CHOICES: tuple[str, ...] = ("left", "right", "tie", "both_bad")
MAX_REASON_CHARS = 2000
HUMAN_ROUTES = (Route.human, Route.audit)


class NotAssigned(NotFound):
    """The user has no claim on this pair."""


class LeaseExpired(Conflict):
    """The lease ran out and the pair's slots went to others."""


@dataclass(frozen=True)
class ShownSuggestion:
    p_left: float  # P(left ≻ right) in the order the user sees
    uncertainty: float
    agent: str


@dataclass(frozen=True)
class Claim:
    pair_id: int
    prompt: str
    prompt_messages: list[dict[str, str]] | None
    left: str
    right: str
    # The response ended at max_new_tokens rather than by itself (sampling["finished"] False);
    # False for a response without sampling details (seed, imported).
    left_cut: bool
    right_cut: bool
    swapped: bool  # True: response b is shown on the left
    suggestion: ShownSuggestion | None
    claimed_at: datetime
    expires_at: datetime


# Assignment.status == active, as the partial index ix_assignment_live spells it.
_LIVE = sa.text("assignment.status = 'active'")


def _active_leases(pair_id_column, now: datetime):
    """Scalar subquery: active, unexpired leases on a pair."""
    return (
        select(sa.func.count(Assignment.id))
        .where(Assignment.pair_id == pair_id_column, _LIVE, Assignment.expires_at > now)
        .scalar_subquery()
    )


# Pair.status == queued and Pair.route in HUMAN_ROUTES, spelled as the partial index ix_pair_claim
# spells it (storage/models.py), so that both databases walk that index.
_QUEUED_FOR_HUMANS = sa.text("pair.status = 'queued' AND pair.route IN ('human', 'audit')")
assert _QUEUED_FOR_HUMANS.text.replace("pair.", "") == QUEUED_FOR_HUMANS_SQL
assert {PairStatus.queued.value} | set(HUMAN_ROUTES) == {"queued", "human", "audit"}
# The claim order, ix_pair_claim's: pairs that have some labels first (finish them), then oldest.
_CLAIM_ORDER = (Pair.n_labels.desc(), Pair.id)


def _claimable(user_id: int, now: datetime) -> list:
    """Conditions for a pair this user may claim now. Walked in _CLAIM_ORDER, they are checked
    pair by pair through indexes and the walk stops at the first free pair: the cost depends on
    how many pairs ahead are leased to others or passed by this user, not on the queue's size."""
    return [
        _QUEUED_FOR_HUMANS,
        ~sa.exists().where(Assignment.pair_id == Pair.id, Assignment.user_id == user_id),
        Pair.n_labels + _active_leases(Pair.id, now) < Pair.overlap,
    ]


_ASSIGNMENT = Assignment.__table__
_PAIR = Pair.__table__
_LABEL = Label.__table__

# The hot path's statements are built once, with bound parameters: building a SQLAlchemy statement
# costs more than SQLite running it.
_HELD_LEASE = (
    sa.select(
        _ASSIGNMENT.c.pair_id,
        _ASSIGNMENT.c.swapped,
        _ASSIGNMENT.c.claimed_at,
        _ASSIGNMENT.c.expires_at,
    )
    .join(_PAIR, _PAIR.c.id == _ASSIGNMENT.c.pair_id)
    .where(
        _ASSIGNMENT.c.user_id == sa.bindparam("user_id"),
        _LIVE,
        _ASSIGNMENT.c.expires_at > sa.bindparam("now", type_=_ASSIGNMENT.c.expires_at.type),
        _PAIR.c.status == PairStatus.queued.value,
    )
    .order_by(_ASSIGNMENT.c.claimed_at.desc(), _ASSIGNMENT.c.id.desc())
    .limit(1)
)


def _held_lease(session: Session, user_id: int, now: datetime) -> sa.Row | None:
    """(pair_id, swapped, claimed_at, expires_at) of the lease the user holds, if any."""
    return run_core(session, _HELD_LEASE, {"user_id": user_id, "now": now}).first()


def claim_next_pair(
    *,
    session: Session,
    user_id: int,
    lease_seconds: int,
    rng: random.Random | None = None,
    now: datetime | None = None,
) -> Claim | None:
    """Claim the next pair for `user_id`, or return the lease they hold already; None: nothing left.

    The A/B order shown is drawn from `rng` and kept on the assignment. `now` is for tests."""
    now = now or utcnow()
    if not is_sqlite(session.get_bind()):
        # One claim per user at a time; NO KEY UPDATE leaves foreign-key checks unblocked.
        session.exec(select(User.id).where(User.id == user_id).with_for_update(key_share=True))
    held = _held_lease(session, user_id, now)
    if held is not None:
        return _claim_view(session, *held)
    _expire(session, now, user_id=user_id)

    swapped = (rng or random).random() < 0.5
    expires_at = now + timedelta(seconds=lease_seconds)
    if is_sqlite(session.get_bind()):
        pair_id = _claim_sqlite(session, user_id, now, expires_at, swapped)
    else:
        pair_id = _claim_postgres(session, user_id, now, expires_at, swapped)
    if pair_id is None:
        return None
    return _claim_view(session, pair_id, swapped, now, expires_at)


_CLAIM_SQLITE = """
INSERT INTO assignment (pair_id, user_id, status, swapped, claimed_at, expires_at)
SELECT pair.id, :user_id, 'active', :swapped, :now, :expires_at
FROM pair INDEXED BY ix_pair_claim
WHERE pair.status = 'queued' AND pair.route IN ('human', 'audit')
  AND NOT EXISTS (SELECT 1 FROM assignment AS mine
                  WHERE mine.pair_id = pair.id AND mine.user_id = :user_id)
  AND pair.n_labels + (SELECT count(*) FROM assignment
                       WHERE assignment.pair_id = pair.id AND assignment.status = 'active'
                         AND assignment.expires_at > :now) < pair.overlap
ORDER BY pair.n_labels DESC, pair.id
LIMIT 1
RETURNING pair_id
"""


def _claim_sqlite(
    session: Session, user_id: int, now: datetime, expires_at: datetime, swapped: bool
) -> int | None:
    # The same conditions and order as _claimable/_CLAIM_ORDER, written out because SQLite's
    # planner, without statistics, prefers ix_pair_queue and sorts the whole queue; INDEXED BY
    # makes it walk ix_pair_claim and stop at the first free pair.
    when = Assignment.__table__.c.expires_at.type
    statement = sa.text(_CLAIM_SQLITE).bindparams(
        sa.bindparam("user_id", user_id),
        sa.bindparam("swapped", swapped, sa.Boolean()),
        sa.bindparam("now", now, when),
        sa.bindparam("expires_at", expires_at, when),
    )
    return run_core(session, statement).scalar_one_or_none()


def _claim_postgres(
    session: Session, user_id: int, now: datetime, expires_at: datetime, swapped: bool
) -> int | None:
    tried: list[int] = []
    while True:
        query = (
            select(Pair.id)
            .where(*_claimable(user_id, now), Pair.id.not_in(tried))
            .order_by(*_CLAIM_ORDER)
            .limit(1)
            .with_for_update(skip_locked=True, key_share=True, of=Pair)
        )
        pair_id = session.exec(query).first()
        if pair_id is None:
            return None
        # Locked: count again with a fresh snapshot (see the module docstring).
        n_labels, overlap = session.execute(
            select(Pair.n_labels, Pair.overlap).where(Pair.id == pair_id)
        ).one()
        leases = session.execute(select(_active_leases(pair_id, now))).scalar_one()
        if n_labels + leases < overlap:
            break
        tried.append(pair_id)
    session.add(
        Assignment(
            pair_id=pair_id,
            user_id=user_id,
            swapped=swapped,
            claimed_at=now,
            expires_at=expires_at,
        )
    )
    session.flush()
    return pair_id


_RESPONSE_A = aliased(Response)
_RESPONSE_B = aliased(Response)
_LATEST = aliased(Suggestion)


_LATEST_SUGGESTION = (
    select(_LATEST.id)
    .where(_LATEST.pair_id == Pair.id)
    .order_by(_LATEST.created_at.desc(), _LATEST.id.desc())
    .limit(1)
    .scalar_subquery()
)
_CLAIM_VIEW = (
    select(
        Prompt.text,
        Prompt.messages,
        _RESPONSE_A.text,
        _RESPONSE_B.text,
        _RESPONSE_A.sampling,
        _RESPONSE_B.sampling,
        Suggestion.p_a,
        Suggestion.uncertainty,
        Suggestion.agent,
    )
    .select_from(Pair)
    .join(Prompt, Prompt.id == Pair.prompt_id)
    .join(_RESPONSE_A, _RESPONSE_A.id == Pair.response_a_id)
    .join(_RESPONSE_B, _RESPONSE_B.id == Pair.response_b_id)
    .outerjoin(Suggestion, Suggestion.id == _LATEST_SUGGESTION)
    .where(Pair.id == sa.bindparam("pair_id"))
)


def _claim_view(
    session: Session, pair_id: int, swapped: bool, claimed_at: datetime, expires_at: datetime
) -> Claim:
    """The pair as this user sees it, read in one query (the newest suggestion included)."""
    row = run_core(session, _CLAIM_VIEW, {"pair_id": pair_id}).one()
    prompt, messages, text_a, text_b, sampling_a, sampling_b, p_a, uncertainty, agent = row
    shown = None if agent is None else _as_shown(p_a, uncertainty, agent, swapped)
    left, right = (text_b, text_a) if swapped else (text_a, text_b)
    cut_a, cut_b = _was_cut(sampling_a), _was_cut(sampling_b)
    return Claim(
        pair_id=pair_id,
        prompt=prompt,
        prompt_messages=messages,
        left=left,
        right=right,
        left_cut=cut_b if swapped else cut_a,
        right_cut=cut_a if swapped else cut_b,
        swapped=swapped,
        suggestion=shown,
        claimed_at=claimed_at,
        expires_at=expires_at,
    )


def _was_cut(sampling: dict | None) -> bool:
    """Generation stopped at max_new_tokens (labeling/generation.py's Sample.sampling())."""
    return (sampling or {}).get("finished") is False


_SUGGESTION_VIEW = (
    select(Suggestion.p_a, Suggestion.uncertainty, Suggestion.agent)
    .select_from(Pair)
    .join(Suggestion, Suggestion.id == _LATEST_SUGGESTION)
    .where(Pair.id == sa.bindparam("pair_id"))
)


def shown_suggestion(*, session: Session, pair_id: int, swapped: bool) -> ShownSuggestion | None:
    """The pair's newest suggestion in the order the user saw it (for "revealed after the vote")."""
    row = run_core(session, _SUGGESTION_VIEW, {"pair_id": pair_id}).first()
    return None if row is None else _as_shown(*row, swapped)


def _as_shown(p_a: float, uncertainty: float, agent: str, swapped: bool) -> ShownSuggestion:
    """A suggestion about (a, b) in the order the user sees: P(left ≻ right)."""
    return ShownSuggestion(1.0 - p_a if swapped else p_a, uncertainty, agent)


def _translate(shown_choice: str, swapped: bool) -> Choice:
    if shown_choice in ("tie", "both_bad"):
        return Choice(shown_choice)
    left_is_a = not swapped
    return Choice.a if (shown_choice == "left") == left_is_a else Choice.b


def _locked_assignment(session: Session, user_id: int, pair_id: int) -> Assignment:
    query = (
        select(Assignment)
        .where(Assignment.pair_id == pair_id, Assignment.user_id == user_id)
        .execution_options(populate_existing=True)
    )
    if not is_sqlite(session.get_bind()):
        query = query.with_for_update(key_share=True)
    assignment = session.exec(query).first()
    if assignment is None:
        raise NotAssigned(f"user {user_id} has no claim on pair {pair_id}")
    return assignment


def submit_label(
    *,
    session: Session,
    user_id: int,
    pair_id: int,
    shown_choice: ShownChoice,
    seconds: float | None = None,
    reason: str | None = None,
    now: datetime | None = None,
    timed_from_claim: bool = False,
) -> Label:
    """Store the user's label for a pair they claimed; a repeated submit returns the first label.

    `shown_choice` is what the user picked in the order they saw ("left", "right", "tie",
    "both_bad"). A submit after the lease expired is taken while the pair still has a free slot.
    With `timed_from_claim` and no `seconds`, the time spent is measured here, from the claim."""
    now = now or utcnow()
    if shown_choice not in SHOWN_CHOICES:
        raise ValueError(f"choice {shown_choice!r}: expected one of {', '.join(SHOWN_CHOICES)}")
    if seconds is not None and not seconds >= 0:
        raise ValueError(f"seconds: must be >= 0 (got {seconds!r})")
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason: at most {MAX_REASON_CHARS} characters (got {len(reason)})")
    postgres = not is_sqlite(session.get_bind())
    params = {"pair_id": pair_id, "user_id": user_id}
    assignment = run_core(
        session, _SUBMIT_ASSIGNMENT_LOCKED if postgres else _SUBMIT_ASSIGNMENT, params
    ).first()
    if assignment is None:
        raise NotAssigned(f"user {user_id} has no claim on pair {pair_id}")
    assignment_id, status, swapped, claimed_at, expires_at = assignment
    if seconds is None and timed_from_claim:
        seconds = max(0.0, (now - claimed_at).total_seconds())
    existing = run_core(session, _EXISTING_LABEL, params).scalar()
    if existing is not None:
        return session.get(Label, existing)
    choice = _translate(shown_choice, swapped)
    if status == AssignmentStatus.skipped:
        raise Conflict(f"pair {pair_id} was skipped by user {user_id}")

    pair_status, n_labels, overlap = run_core(
        session, _SUBMIT_PAIR_LOCKED if postgres else _SUBMIT_PAIR, params
    ).one()
    if pair_status == PairStatus.discarded:
        raise Conflict(f"pair {pair_id} was withdrawn")
    if status != AssignmentStatus.active or expires_at <= now:
        others = session.execute(select(_active_leases(pair_id, now))).scalar_one()
        if pair_status != PairStatus.queued or n_labels + others >= overlap:
            raise LeaseExpired(f"the lease on pair {pair_id} expired and others took it")

    label = Label(
        pair_id=pair_id,
        user_id=user_id,
        source=LabelSource.human,
        choice=choice,
        swapped=swapped,
        seconds=seconds,
        reason=reason,
        created_at=now,
    )
    # A Core insert (the ORM's flush is the dearest statement of a click); the Label returned
    # is not attached to the session.
    values = label.model_dump(exclude={"id"})
    label.id = run_core(session, _ADD_LABEL, values).scalar_one()
    run_core(session, _MARK_SUBMITTED, {"assignment_id": assignment_id})
    run_core(session, _COUNT_LABEL, params)
    return label


_SUBMIT_ASSIGNMENT = sa.select(
    _ASSIGNMENT.c.id,
    _ASSIGNMENT.c.status,
    _ASSIGNMENT.c.swapped,
    _ASSIGNMENT.c.claimed_at,
    _ASSIGNMENT.c.expires_at,
).where(
    _ASSIGNMENT.c.pair_id == sa.bindparam("pair_id"),
    _ASSIGNMENT.c.user_id == sa.bindparam("user_id"),
)
_SUBMIT_ASSIGNMENT_LOCKED = _SUBMIT_ASSIGNMENT.with_for_update(key_share=True)
_EXISTING_LABEL = sa.select(_LABEL.c.id).where(
    _LABEL.c.pair_id == sa.bindparam("pair_id"), _LABEL.c.user_id == sa.bindparam("user_id")
)
_ADD_LABEL = sa.insert(_LABEL).returning(_LABEL.c.id)
_SUBMIT_PAIR = sa.select(_PAIR.c.status, _PAIR.c.n_labels, _PAIR.c.overlap).where(
    _PAIR.c.id == sa.bindparam("pair_id")
)
_SUBMIT_PAIR_LOCKED = _SUBMIT_PAIR.with_for_update(key_share=True)
_MARK_SUBMITTED = (
    sa.update(_ASSIGNMENT)
    .where(_ASSIGNMENT.c.id == sa.bindparam("assignment_id"))
    .values(status=AssignmentStatus.submitted.value)
)
_COUNT_LABEL = (
    sa.update(_PAIR)
    .where(_PAIR.c.id == sa.bindparam("pair_id"))
    .values(
        n_labels=_PAIR.c.n_labels + 1,
        status=sa.case(
            (_PAIR.c.n_labels + 1 >= _PAIR.c.overlap, PairStatus.done.value),
            else_=_PAIR.c.status,
        ),
    )
)


def skip_pair(*, session: Session, user_id: int, pair_id: int) -> None:
    """The user passes on this pair: they never get it again, and it goes back to the others."""
    assignment = _locked_assignment(session, user_id, pair_id)
    if assignment.status == AssignmentStatus.submitted:
        raise Conflict(f"pair {pair_id} is labeled already by user {user_id}")
    assignment.status = AssignmentStatus.skipped
    session.add(assignment)
    session.flush()


def _expire(session: Session, now: datetime, *, user_id: int | None = None) -> int:
    # A Core update: the ORM's would evaluate its WHERE against every Assignment in the session.
    query = sa.update(_ASSIGNMENT).where(_LIVE, _ASSIGNMENT.c.expires_at <= now)
    if user_id is not None:
        query = query.where(_ASSIGNMENT.c.user_id == user_id)
    query = query.values(status=AssignmentStatus.expired.value)
    return run_core(session, query).rowcount


def release_expired(*, session: Session, now: datetime | None = None) -> int:
    """Mark leases that ran out as expired; returns how many. (Their slots were free already.)"""
    return _expire(session, now or utcnow())


_QUEUED_SHORT = """
SELECT count(*) FROM pair {hint}
WHERE pair.status = 'queued' AND pair.route IN ('human', 'audit') AND pair.n_labels < pair.overlap
"""

# Of those, the ones this user cannot get: claimed by them before, or filled by live leases.
_TAKEN_FOR_USER = """
SELECT count(*) FROM pair
   WHERE pair.id IN (SELECT pair_id FROM assignment WHERE user_id = :user_id
                     UNION
                     SELECT pair_id FROM assignment
                     WHERE assignment.status = 'active' AND assignment.expires_at > :now)
     AND pair.status = 'queued' AND pair.route IN ('human', 'audit')
     AND pair.n_labels < pair.overlap
     AND (EXISTS (SELECT 1 FROM assignment AS mine
                  WHERE mine.pair_id = pair.id AND mine.user_id = :user_id)
          OR pair.n_labels + (SELECT count(*) FROM assignment
                              WHERE assignment.pair_id = pair.id
                                AND assignment.status = 'active'
                                AND assignment.expires_at > :now) >= pair.overlap)
"""


_TAKEN = sa.text(_TAKEN_FOR_USER).bindparams(
    sa.bindparam("user_id"), sa.bindparam("now", type_=Assignment.__table__.c.expires_at.type)
)
_LABELED_SINCE = sa.select(sa.func.count(_LABEL.c.id)).where(
    _LABEL.c.user_id == sa.bindparam("user_id"),
    _LABEL.c.created_at >= sa.bindparam("since", type_=_LABEL.c.created_at.type),
)


def count_queued_short(*, session: Session) -> int:
    """Queued human and audit pairs short of their labels: an index-only count over
    ix_pair_claim, the one part of `queue_stats` whose cost grows with the queue."""
    hint = "INDEXED BY ix_pair_claim" if is_sqlite(session.get_bind()) else ""
    return run_core(session, sa.text(_QUEUED_SHORT.format(hint=hint))).scalar_one()


def queue_stats(
    *,
    session: Session,
    user_id: int,
    now: datetime | None = None,
    queued_short: int | None = None,
    holds_pair: bool | None = None,
) -> dict[str, int]:
    """{labeled_today: this user's labels since 00:00 UTC, queue_left: pairs they could still get
    (the one they hold included)}.

    The pairs free for this user are counted as: queued human pairs short of labels
    (`count_queued_short`, or `queued_short` when the caller has it from a moment ago), less
    those this user has claimed before or that live leases fill (both found from the
    assignments, a few rows), never by checking every pair. `holds_pair`: whether the user
    holds a lease, when the caller knows (it has just claimed in this transaction)."""
    now = now or utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    labeled_today = run_core(
        session, _LABELED_SINCE, {"user_id": user_id, "since": midnight}
    ).scalar_one()
    if queued_short is None:
        queued_short = count_queued_short(session=session)
    taken = run_core(session, _TAKEN, {"user_id": user_id, "now": now}).scalar_one()
    if holds_pair is None:
        holds_pair = _held_lease(session, user_id, now) is not None
    held = 1 if holds_pair else 0
    # max: a stale `queued_short` may already miss pairs that the assignments still count
    return {"labeled_today": labeled_today, "queue_left": max(0, queued_short - taken) + held}
