"""The annotation queue: claim a pair, label it, skip it. Only these functions move pairs through it.

A claim is an `Assignment` row (unique per pair and user) with a lease. A pair can be claimed while
its human labels plus its active, unexpired leases are fewer than its overlap; a lease that expires
gives its slot back (`release_expired` only tidies the rows, the counting never trusts them). A user
never gets a pair they hold, labeled, skipped or let expire. That rule is written once, as SQL
expressions (`_claimable`: waiting in a queue, and `_free_for` the user): the claim on both
databases, a late submit's check and the "left in the queue" counter are built from them.
"Label, then claim the next" is `label_and_claim_next`, for the labeling page and the API alike.

Three queues feed one annotator: the preference pairs (routes human and audit), the evaluation
pairs (route eval: two policy versions, blind) and the gold pairs (route gold: a known answer, see
storage/gold.py), each walked through its own partial index. A claim takes an evaluation pair when
they are due, `eval_share` of the user's recent claims (`_due`), and otherwise a preference pair;
when the queue it prefers has nothing for the user, it takes from the other, so neither kind waits
while the other is empty. Gold pairs are mixed in the same way at `gold_rate` and tried first when
due, but never taken for want of other work: when none is due and the other two queues are empty
for the user, the claim finds nothing (and gold pairs are no part of the "left in the queue"
count). At `gold_rate` 1 every claim is due a gold pair: a qualification round. A gold pair never runs out of slots (`GOLD_OVERLAP`), and like every pair it
is never shown twice to the same user.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from storage import guidelines, rewrites
from storage.crud import Conflict, NotFound
from storage.db import is_sqlite, run_core
from storage.models import (
    QUEUED_FOR_EVAL_SQL,
    QUEUED_FOR_HUMANS_SQL,
    QUEUED_GOLD_SQL,
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
from storage.text import refuse_nul

if TYPE_CHECKING:
    from storage.settings import LabelingSettings

ShownChoice = Literal["left", "right", "tie", "both_bad"]
SHOWN_CHOICES: tuple[str, ...] = ("left", "right", "tie", "both_bad")
# A judgment on one of `labeling.criteria`, in the order shown.
CRITERION_CHOICES: tuple[str, ...] = ("left", "right", "tie")
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


_ASSIGNMENT = Assignment.__table__
_PAIR = Pair.__table__
_LABEL = Label.__table__
_WHEN = _ASSIGNMENT.c.expires_at.type

# Assignment.status == active, as the partial index ix_assignment_live spells it.
_LIVE = sa.text("assignment.status = 'active'")


@dataclass(frozen=True)
class _Queue:
    """The pairs waiting in one queue, spelled as its partial index spells them (storage/models.py)
    so that both databases walk that index, and the SQLite hint naming it: SQLite's planner,
    without statistics, prefers ix_pair_queue and sorts the whole queue (`_sqlite_from_hint`)."""

    waiting: sa.TextClause
    hint: str


# Preference pairs: Pair.status == queued and Pair.route in HUMAN_ROUTES.
_PREFERENCES = _Queue(
    sa.text("pair.status = 'queued' AND pair.route IN ('human', 'audit')"),
    "INDEXED BY ix_pair_claim",
)
# Evaluation pairs: Pair.status == queued and Pair.route == eval.
_EVALUATION = _Queue(
    sa.text("pair.status = 'queued' AND pair.route = 'eval'"), "INDEXED BY ix_pair_eval_claim"
)
# Gold pairs: Pair.status == queued and Pair.route == gold.
_GOLD = _Queue(
    sa.text("pair.status = 'queued' AND pair.route = 'gold'"), "INDEXED BY ix_pair_gold_claim"
)
# The queues whose pairs count as work left ("Left in the queue"): gold pairs are no work.
_COUNTED = (_PREFERENCES, _EVALUATION)
_QUEUES = (*_COUNTED, _GOLD)
assert _PREFERENCES.waiting.text.replace("pair.", "") == QUEUED_FOR_HUMANS_SQL
assert _EVALUATION.waiting.text.replace("pair.", "") == QUEUED_FOR_EVAL_SQL
assert _GOLD.waiting.text.replace("pair.", "") == QUEUED_GOLD_SQL
assert {PairStatus.queued.value} | set(HUMAN_ROUTES) == {"queued", "human", "audit"}
assert (Route.eval.value, Route.gold.value) == ("eval", "gold")
# The claim order, the claim indexes': pairs that have some labels first (finish them), then oldest.
_CLAIM_ORDER = (_PAIR.c.n_labels.desc(), _PAIR.c.id)
# How many of a user's latest claims `_due` weighs.
EVAL_SHARE_WINDOW = 100

# The statements' parameters: the user asking, and the time of the claim.
_USER_ID = sa.bindparam("user_id")
_NOW = sa.bindparam("now", type_=_WHEN)


# "A pair this user may claim now", defined once below: the claim (both databases), the
# late submit's check and the queue counter are built from these expressions.


def _live_leases(now) -> sa.ScalarSelect:
    """Scalar subquery: the pair's active, unexpired leases."""
    return (
        sa.select(sa.func.count())
        .where(_ASSIGNMENT.c.pair_id == _PAIR.c.id, _LIVE, _ASSIGNMENT.c.expires_at > now)
        .correlate(_PAIR)
        .scalar_subquery()
    )


def _has_free_slot(now) -> sa.ColumnElement[bool]:
    """Its human labels plus its live leases are fewer than its overlap: an expired lease gives
    its slot back whatever its row says (`release_expired` only tidies)."""
    return _PAIR.c.n_labels + _live_leases(now) < _PAIR.c.overlap


def _free_for(user_id, now) -> sa.ColumnElement[bool]:
    """A free slot, and never claimed by this user (held, labeled, skipped or let expire)."""
    mine = _ASSIGNMENT.alias("mine")
    claimed_before = (
        sa.select(sa.literal_column("1"))  # SELECT 1: SQLite then reads the index alone
        .where(mine.c.pair_id == _PAIR.c.id, mine.c.user_id == user_id)
        .correlate(_PAIR)
        .exists()
    )
    return sa.and_(~claimed_before, _has_free_slot(now))


def _claimable(user_id, now, queue: _Queue) -> sa.ColumnElement[bool]:
    """A pair this user may claim now: waiting in `queue` and free for them. Walked in
    _CLAIM_ORDER, the conditions are checked pair by pair through indexes and the walk stops at
    the first free pair: the cost depends on how many pairs ahead are leased to others or passed
    by this user, not on the queue's size."""
    return sa.and_(queue.waiting, _free_for(user_id, now))


def _short(queue: _Queue) -> sa.ColumnElement[bool]:
    """Waiting in `queue` and short of labels: the pairs that may be claimable by someone."""
    return sa.and_(queue.waiting, _PAIR.c.n_labels < _PAIR.c.overlap)


@compiles(sa.Table, "sqlite")
def _sqlite_from_hint(table, compiler, **kw) -> str:
    """A select's `with_hint(table, "INDEXED BY ...", "sqlite")` rendered after the table name:
    SQLAlchemy's SQLite compiler renders no table hints of its own."""
    text = compiler.visit_table(table, **kw)
    hint = (kw.get("fromhints") or {}).get(table)
    return f"{text} {hint}" if hint and kw.get("asfrom") else text


# The hot path's statements are built once, with bound parameters: building a SQLAlchemy statement
# costs more than SQLite running it.
def _held_lease_query(user_id, now) -> sa.Select:
    return (
        sa.select(
            _ASSIGNMENT.c.pair_id,
            _ASSIGNMENT.c.swapped,
            _ASSIGNMENT.c.claimed_at,
            _ASSIGNMENT.c.expires_at,
        )
        .join(_PAIR, _PAIR.c.id == _ASSIGNMENT.c.pair_id)
        .where(
            _ASSIGNMENT.c.user_id == user_id,
            _LIVE,
            _ASSIGNMENT.c.expires_at > now,
            _PAIR.c.status == PairStatus.queued.value,
        )
        .order_by(_ASSIGNMENT.c.claimed_at.desc(), _ASSIGNMENT.c.id.desc())
        .limit(1)
    )


_HELD_LEASE = _held_lease_query(_USER_ID, _NOW)


def _expiring(now, user_id=None) -> sa.Update:
    """Lapsed leases (a user's: through ix_assignment_user_live) marked expired. A Core update:
    the ORM's would evaluate its WHERE against every Assignment in the session."""
    query = sa.update(_ASSIGNMENT).where(_LIVE, _ASSIGNMENT.c.expires_at <= now)
    if user_id is not None:
        query = query.where(_ASSIGNMENT.c.user_id == user_id)
    return query.values(status=AssignmentStatus.expired.value)


# PostgreSQL: the user's lapsed leases marked expired (tidying: the counts never trust the
# status) in the same statement that reads the live one, a data-modifying CTE. Its parameters
# are named apart from the columns (x_*): SQLAlchemy would read one named like a column of the
# updated table as one more column to set.
_X_USER, _X_NOW = sa.bindparam("x_user", type_=sa.Integer()), sa.bindparam("x_now", type_=_WHEN)
_HELD_LEASE_EXPIRING_POSTGRES = _held_lease_query(_X_USER, _X_NOW).add_cte(
    _expiring(_X_NOW, _X_USER).cte("expired")
)


# PostgreSQL, for the rest of the claim's transaction: every statement on its generic plan,
# planned once per connection (psycopg prepares a statement run five times). PostgreSQL's own
# choice re-planned the candidate walk (`_NEXT_CLAIMABLE`) on every claim, about 0.25-0.3 ms of
# a claim's 1 ms in the database, for the plan the generic one is: the walk down the queue's
# partial index (pg_stat_statements, 50 clients: 0.13 ms to run either way).
_GENERIC_PLANS = sa.func.set_config("plan_cache_mode", "force_generic_plan", sa.true())
_LOCK_USER_POSTGRES = (
    select(User.id, _GENERIC_PLANS)
    .where(User.id == sa.bindparam("l_user", type_=sa.Integer()))
    .with_for_update(key_share=True)
)


def _held_lease(session: Session, user_id: int, now: datetime) -> sa.Row | None:
    """(pair_id, swapped, claimed_at, expires_at) of the lease the user holds, if any."""
    return run_core(session, _HELD_LEASE, {"user_id": user_id, "now": now}).first()


def claim_next_pair(
    *,
    session: Session,
    user_id: int,
    lease_seconds: int,
    eval_share: float = 0.0,
    gold_rate: float = 0.0,
    rng: random.Random | None = None,
    now: datetime | None = None,
) -> Claim | None:
    """Claim the next pair for `user_id`, or return the lease they hold already; None: nothing left.

    `eval_share` (`eval.human_share`): the share of the user's claims that go to evaluation
    pairs while both queues have pairs for them (0: evaluation pairs only when no preference
    pair is left; 1: evaluation pairs first). `gold_rate` (`labeling.gold_rate`): the share that
    go to gold pairs the user has not had, while there is other work for them. The A/B order
    shown is drawn from `rng` and kept on the assignment. `now` is for tests."""
    now = now or utcnow()
    if is_sqlite(session.get_bind()):
        held = _held_lease(session, user_id, now)
        if held is None:
            _expire(session, now, user_id=user_id)
    else:
        # One claim per user at a time; NO KEY UPDATE leaves foreign-key checks unblocked. The
        # lease is read after the lock, in a statement of its own: a fresh snapshot, which sees
        # the claim of a double click's first request. The same statement sets the claim's
        # plans generic (`_GENERIC_PLANS`).
        run_core(session, _LOCK_USER_POSTGRES, {"l_user": user_id})
        params = {"x_user": user_id, "x_now": now}
        held = run_core(session, _HELD_LEASE_EXPIRING_POSTGRES, params).first()
    if held is not None:
        return _claim_view(session, *held)

    swapped = (rng or random).random() < 0.5
    expires_at = now + timedelta(seconds=lease_seconds)
    for queue in _queue_order(session, user_id, eval_share, gold_rate):
        if is_sqlite(session.get_bind()):
            pair_id = _claim_sqlite(session, user_id, now, expires_at, swapped, queue)
            if pair_id is not None:
                return _claim_view(session, pair_id, swapped, now, expires_at)
        else:
            claimed = _claim_postgres(session, user_id, now, expires_at, swapped, queue)
            if claimed is not None:
                return _as_claim(claimed[1], claimed[0], swapped, now, expires_at)
    return None


def _waiting(queue: _Queue) -> sa.Select:
    """Whether any pair waits in `queue`: one index probe."""
    return (
        sa.select(sa.literal_column("1"))
        .select_from(_PAIR)
        .with_hint(_PAIR, queue.hint, "sqlite")
        .where(queue.waiting)
        .limit(1)
    )


# Whether evaluation pairs and gold pairs wait: two index probes in one statement.
_WAITING = sa.select(_waiting(_EVALUATION).exists(), _waiting(_GOLD).exists())
_RECENT = (
    sa.select(_ASSIGNMENT.c.pair_id)
    .where(_ASSIGNMENT.c.user_id == _USER_ID)
    .order_by(_ASSIGNMENT.c.id.desc())
    .limit(EVAL_SHARE_WINDOW)
    .subquery("recent")
)


def _of_route(route: Route) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((_PAIR.c.route == route.value, 1), else_=0)), 0)


# (claims, evaluation claims, gold claims) among the user's latest EVAL_SHARE_WINDOW
_RECENT_MIX = sa.select(sa.func.count(), _of_route(Route.eval), _of_route(Route.gold)).select_from(
    _RECENT.join(_PAIR, _PAIR.c.id == _RECENT.c.pair_id)
)


def _due(claims: int, of_kind: int, share: float) -> bool:
    """Whether the next claim goes to a pair of a mixed-in kind (evaluation, gold): when it keeps
    that kind at no more than `share` of the claims counted with it. So share 0.1 gives every
    tenth claim from the tenth, and over any EVAL_SHARE_WINDOW claims the count stays within one
    of the share."""
    return of_kind + 1 <= share * (claims + 1) + 1e-9


def _queue_order(
    session: Session, user_id: int, eval_share: float, gold_rate: float = 0.0
) -> tuple[_Queue, ...]:
    """The queues in the order this claim tries them. With no evaluation or gold pair waiting,
    the preference queue alone, at the cost of one statement of two index probes."""
    evaluation, gold = run_core(session, _WAITING).one()
    gold = gold and gold_rate > 0
    if not (evaluation or gold):
        return (_PREFERENCES,)
    claims, of_eval, of_gold = run_core(session, _RECENT_MIX, {"user_id": user_id}).one()
    order = (_PREFERENCES,)
    if evaluation:
        eval_first = _due(claims, of_eval, eval_share)
        order = (_EVALUATION, _PREFERENCES) if eval_first else (_PREFERENCES, _EVALUATION)
    if gold and _due(claims, of_gold, gold_rate):
        order = (_GOLD, *order)
    return order


def _sqlite_claim_statement(queue: _Queue):
    """SQLite: the claim in one statement, INSERT INTO assignment ... SELECT ... RETURNING."""
    return (
        sa.insert(_ASSIGNMENT)
        .from_select(
            ["pair_id", "user_id", "status", "swapped", "claimed_at", "expires_at"],
            sa.select(
                _PAIR.c.id,
                _USER_ID,
                sa.literal_column(f"'{AssignmentStatus.active.value}'"),
                sa.bindparam("swapped", type_=sa.Boolean()),
                _NOW,
                sa.bindparam("expires_at", type_=_WHEN),
            )
            .with_hint(_PAIR, queue.hint, "sqlite")
            .where(_claimable(_USER_ID, _NOW, queue))
            .order_by(*_CLAIM_ORDER)
            .limit(1),
        )
        .returning(_ASSIGNMENT.c.pair_id)
    )


_CLAIM_SQLITE = {queue: _sqlite_claim_statement(queue) for queue in _QUEUES}


def _claim_sqlite(
    session: Session,
    user_id: int,
    now: datetime,
    expires_at: datetime,
    swapped: bool,
    queue: _Queue,
) -> int | None:
    params = {"user_id": user_id, "swapped": swapped, "now": now, "expires_at": expires_at}
    return run_core(session, _CLAIM_SQLITE[queue], params).scalar_one_or_none()


# PostgreSQL: the next claimable pair not tried yet, locked; then its slots counted again.
_NEXT_CLAIMABLE = {
    queue: (
        sa.select(_PAIR.c.id)
        .where(
            _claimable(_USER_ID, _NOW, queue),
            _PAIR.c.id.not_in(sa.bindparam("tried", expanding=True)),
        )
        .order_by(*_CLAIM_ORDER)
        .limit(1)
        .with_for_update(skip_locked=True, key_share=True, of=_PAIR)
    )
    for queue in _QUEUES
}
_FREE_SLOT = sa.select(_has_free_slot(_NOW)).where(_PAIR.c.id == sa.bindparam("pair_id"))


def _free_slot(session: Session, pair_id: int, now: datetime) -> bool:
    """Whether the pair has a free slot now, counted in a statement of its own."""
    return bool(run_core(session, _FREE_SLOT, {"pair_id": pair_id, "now": now}).scalar_one())


def _claim_postgres(
    session: Session,
    user_id: int,
    now: datetime,
    expires_at: datetime,
    swapped: bool,
    queue: _Queue,
) -> tuple[int, sa.Row] | None:
    """(pair id, the pair as shown) of a new claim on the first free pair of `queue`."""
    tried: list[int] = []
    while True:
        params = {"user_id": user_id, "now": now, "tried": tried}
        pair_id = run_core(session, _NEXT_CLAIMABLE[queue], params).scalar_one_or_none()
        if pair_id is None:
            return None
        # Locked: its slots counted again with a fresh snapshot (see the module docstring), and
        # if one is free, the claim inserted and the pair read for showing, in one statement.
        claimed = {
            "c_pair": pair_id,
            "c_user": user_id,
            "c_swapped": swapped,
            "c_now": now,
            "c_expires": expires_at,
        }
        row = run_core(session, _CLAIM_AND_VIEW_POSTGRES, claimed).first()
        if row is not None:
            return pair_id, row
        tried.append(pair_id)


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
_VIEW_COLUMNS = (
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


def _with_view_joins(query):
    """`query` (selecting _VIEW_COLUMNS with Pair in its FROM) joined to what a claim shows."""
    return (
        query.join(Prompt, Prompt.id == Pair.prompt_id)
        .join(_RESPONSE_A, _RESPONSE_A.id == Pair.response_a_id)
        .join(_RESPONSE_B, _RESPONSE_B.id == Pair.response_b_id)
        .outerjoin(Suggestion, Suggestion.id == _LATEST_SUGGESTION)
    )


_CLAIM_VIEW = _with_view_joins(select(*_VIEW_COLUMNS).select_from(Pair)).where(
    Pair.id == sa.bindparam("pair_id")
)
# PostgreSQL: the claim of a locked pair if it still has a free slot, and the pair as the user
# sees it, in one statement (a data-modifying CTE). Parameters are named apart from every column
# (c_*): SQLAlchemy would read one named like an assignment column as a value to insert.
_CLAIMED = (
    sa.insert(_ASSIGNMENT)
    .from_select(
        ["pair_id", "user_id", "status", "swapped", "claimed_at", "expires_at"],
        sa.select(
            _PAIR.c.id,
            sa.bindparam("c_user", type_=sa.Integer()),
            sa.literal_column(f"'{AssignmentStatus.active.value}'"),
            sa.bindparam("c_swapped", type_=sa.Boolean()),
            sa.bindparam("c_now", type_=_WHEN),
            sa.bindparam("c_expires", type_=_WHEN),
        ).where(
            _PAIR.c.id == sa.bindparam("c_pair", type_=sa.Integer()),
            _has_free_slot(sa.bindparam("c_now", type_=_WHEN)),
        ),
    )
    .returning(_ASSIGNMENT.c.pair_id)
    .cte("claimed")
)
_CLAIM_AND_VIEW_POSTGRES = _with_view_joins(
    select(*_VIEW_COLUMNS).select_from(_CLAIMED).join(Pair, Pair.id == _CLAIMED.c.pair_id)
)


def _claim_view(
    session: Session, pair_id: int, swapped: bool, claimed_at: datetime, expires_at: datetime
) -> Claim:
    """The pair as this user sees it, read in one query (the newest suggestion included)."""
    row = run_core(session, _CLAIM_VIEW, {"pair_id": pair_id}).one()
    return _as_claim(row, pair_id, swapped, claimed_at, expires_at)


def _as_claim(
    row: sa.Row, pair_id: int, swapped: bool, claimed_at: datetime, expires_at: datetime
) -> Claim:
    """A Claim from a row of _VIEW_COLUMNS."""
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


def check_criteria(
    criteria: Mapping[str, str] | None, allowed: Sequence[str]
) -> dict[str, str] | None:
    """The judgments per criterion as sent ({criterion: "left" | "right" | "tie"}, in the order
    shown), or ValueError naming the criterion: each one of `allowed` (`labeling.criteria`), any
    of them may be left out. None or empty: none given."""
    if not criteria:
        return None
    judged = {}
    for name, choice in criteria.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none are configured"
            raise ValueError(f"criteria: {name!r} is no criterion ({known})")
        if choice not in CRITERION_CHOICES:
            raise ValueError(
                f"criteria.{name}: {choice!r}: expected one of {', '.join(CRITERION_CHOICES)}"
            )
        judged[name] = choice
    return judged


def submit_label(
    *,
    session: Session,
    user_id: int,
    pair_id: int,
    shown_choice: ShownChoice,
    seconds: float | None = None,
    reason: str | None = None,
    criteria: Mapping[str, str] | None = None,
    allowed_criteria: Sequence[str] = (),
    now: datetime | None = None,
    timed_from_claim: bool = False,
) -> Label:
    """Store the user's label for a pair they claimed; a repeated submit returns the first label.

    `shown_choice` is what the user picked in the order they saw ("left", "right", "tie",
    "both_bad"); `criteria`, their judgment on each of `allowed_criteria` they gave, in the same
    order (`check_criteria`). A submit after the lease expired is taken while the pair still has
    a free slot. With `timed_from_claim` and no `seconds`, the time spent is measured here, from
    the claim."""
    now = now or utcnow()
    if shown_choice not in SHOWN_CHOICES:
        raise ValueError(f"choice {shown_choice!r}: expected one of {', '.join(SHOWN_CHOICES)}")
    judged = check_criteria(criteria, allowed_criteria)
    if seconds is not None and not seconds >= 0:
        raise ValueError(f"seconds: must be >= 0 (got {seconds!r})")
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"reason: at most {MAX_REASON_CHARS} characters (got {len(reason)})")
    refuse_nul("reason", reason)
    postgres = not is_sqlite(session.get_bind())
    params = {"pair_id": pair_id, "user_id": user_id}
    # The claim, the pair and any label of the user's, in one statement (locked on PostgreSQL).
    state = run_core(session, _SUBMIT_STATE_LOCKED if postgres else _SUBMIT_STATE, params).first()
    if state is None:
        raise NotAssigned(f"user {user_id} has no claim on pair {pair_id}")
    assignment_id, status, swapped, claimed_at, expires_at, pair_status, existing = state
    if seconds is None and timed_from_claim:
        seconds = max(0.0, (now - claimed_at).total_seconds())
    if existing is not None:
        return session.get(Label, existing)
    choice = _translate(shown_choice, swapped)
    if status == AssignmentStatus.skipped:
        raise Conflict(f"pair {pair_id} was skipped by user {user_id}")
    if pair_status == PairStatus.discarded:
        raise Conflict(f"pair {pair_id} was withdrawn")
    late = status != AssignmentStatus.active or expires_at <= now
    # a late label (the user's own lease no longer live) needs a free slot
    if late and (pair_status != PairStatus.queued or not _free_slot(session, pair_id, now)):
        raise LeaseExpired(f"the lease on pair {pair_id} expired and others took it")

    label = Label(
        pair_id=pair_id,
        user_id=user_id,
        source=LabelSource.human,
        choice=choice,
        swapped=swapped,
        seconds=seconds,
        reason=reason,
        criteria=None
        if judged is None
        else {name: str(_translate(shown, swapped)) for name, shown in judged.items()},
        created_at=now,
    )
    # Core statements (the ORM's flush is the dearest statement of a click); the Label returned
    # is not attached to the session. The guidelines' version is read by the insert itself.
    values = label.model_dump(exclude={"id", "guideline_version"})
    if postgres:  # the label, the claim marked submitted and the pair's count: one round trip
        written = {f"w_{k}": v for k, v in values.items()}
        written.update(w_assignment=assignment_id, w_pair=pair_id)
        label.id, label.guideline_version = run_core(session, _SUBMIT_WRITE_POSTGRES, written).one()
        return label
    label.id, label.guideline_version = run_core(session, _ADD_LABEL, values).one()
    run_core(session, _MARK_SUBMITTED, {"assignment_id": assignment_id})
    run_core(session, _COUNT_LABEL, params)
    return label


def claim_for_labeling(
    *,
    session: Session,
    user_id: int,
    labeling: LabelingSettings,
    eval_share: float = 0.0,
    now: datetime | None = None,
) -> Claim | None:
    """`claim_next_pair` under the labeling settings (`gold_rate` among them) and
    `eval.human_share` (`eval_share`): None while an admin has paused labeling."""
    if labeling.paused:
        return None
    return claim_next_pair(
        session=session,
        user_id=user_id,
        lease_seconds=labeling.lease_seconds,
        eval_share=eval_share,
        gold_rate=labeling.gold_rate,
        now=now,
    )


def label_and_claim_next(
    *,
    session: Session,
    user_id: int,
    pair_id: int,
    shown_choice: ShownChoice,
    labeling: LabelingSettings | None,
    eval_share: float = 0.0,
    seconds: float | None = None,
    reason: str | None = None,
    criteria: Mapping[str, str] | None = None,
    allowed_criteria: Sequence[str] | None = None,
    rewrite: tuple[str, str] | None = None,
    timed_from_claim: bool = False,
    now: datetime | None = None,
) -> tuple[Label, Claim | None]:
    """ "Label, then claim the next", in the caller's transaction (one commit a click): the
    labeling page's buttons and the API's `POST /pairs/{id}/label?next=true` both call this.

    `submit_label`, then `claim_for_labeling`; `labeling` None claims nothing (the API without
    `next`). `criteria` are checked against `allowed_criteria` (default: `labeling.criteria`).
    `rewrite` (shown side "left" or "right", text): the user's edit of that response, stored with
    the label (storage/rewrites.py). Returns the label and the next claim (None: nothing left, paused, or not
    asked)."""
    label = submit_label(
        session=session,
        user_id=user_id,
        pair_id=pair_id,
        shown_choice=shown_choice,
        seconds=seconds,
        reason=reason,
        criteria=criteria,
        allowed_criteria=(
            allowed_criteria
            if allowed_criteria is not None
            else (labeling.criteria if labeling is not None else ())
        ),
        now=now,
        timed_from_claim=timed_from_claim,
    )
    if rewrite is not None:
        shown_side, text = rewrite
        if shown_side not in ("left", "right"):
            raise ValueError(f"rewrite.side {shown_side!r}: expected left or right")
        rewrites.add_rewrite(
            session=session,
            pair_id=pair_id,
            user_id=user_id,
            side=_translate(shown_side, label.swapped),
            text=text,
        )
    if labeling is None:
        return label, None
    claim = claim_for_labeling(
        session=session, user_id=user_id, labeling=labeling, eval_share=eval_share, now=now
    )
    return label, claim


_SUBMIT_STATE = (
    sa.select(
        _ASSIGNMENT.c.id,
        _ASSIGNMENT.c.status,
        _ASSIGNMENT.c.swapped,
        _ASSIGNMENT.c.claimed_at,
        _ASSIGNMENT.c.expires_at,
        _PAIR.c.status,
        _LABEL.c.id,
    )
    .select_from(
        _ASSIGNMENT.join(_PAIR, _PAIR.c.id == _ASSIGNMENT.c.pair_id).outerjoin(
            _LABEL,
            sa.and_(
                _LABEL.c.pair_id == _ASSIGNMENT.c.pair_id,
                _LABEL.c.user_id == _ASSIGNMENT.c.user_id,
            ),
        )
    )
    .where(
        _ASSIGNMENT.c.pair_id == sa.bindparam("pair_id"),
        _ASSIGNMENT.c.user_id == sa.bindparam("user_id"),
    )
)
# NO KEY UPDATE leaves foreign-key checks (a label's insert) unblocked.
_SUBMIT_STATE_LOCKED = _SUBMIT_STATE.with_for_update(key_share=True, of=[_ASSIGNMENT, _PAIR])
# Made by the label's insert: its id, and the guidelines' version in force.
_LABEL_MADE = (_LABEL.c.id, _LABEL.c.guideline_version)
_ADD_LABEL = (
    sa.insert(_LABEL).values(guideline_version=guidelines.CURRENT_VERSION).returning(*_LABEL_MADE)
)


def _mark_submitted(assignment_id) -> sa.Update:
    return (
        sa.update(_ASSIGNMENT)
        .where(_ASSIGNMENT.c.id == assignment_id)
        .values(status=AssignmentStatus.submitted.value)
    )


def _count_label(pair_id) -> sa.Update:
    return (
        sa.update(_PAIR)
        .where(_PAIR.c.id == pair_id)
        .values(
            n_labels=_PAIR.c.n_labels + 1,
            status=sa.case(
                (_PAIR.c.n_labels + 1 >= _PAIR.c.overlap, PairStatus.done.value),
                else_=_PAIR.c.status,
            ),
        )
    )


_MARK_SUBMITTED = _mark_submitted(sa.bindparam("assignment_id"))
_COUNT_LABEL = _count_label(sa.bindparam("pair_id"))
# PostgreSQL: the three writes as one statement (data-modifying CTEs; SQLite has none). Its
# parameters are named apart from every column (w_*): SQLAlchemy reads a parameter named like a
# column of an UPDATE as one more column to set.
_NEW_LABEL = (
    sa.insert(_LABEL)
    .values(
        {
            c.name: sa.bindparam(f"w_{c.name}", type_=c.type)
            for c in _LABEL.c
            if c.name not in ("id", "guideline_version")
        }
        | {"guideline_version": guidelines.CURRENT_VERSION}
    )
    .returning(*_LABEL_MADE)
    .cte("new_label")
)
_SUBMIT_WRITE_POSTGRES = (
    sa.select(_NEW_LABEL.c.id, _NEW_LABEL.c.guideline_version)
    .add_cte(_mark_submitted(sa.bindparam("w_assignment")).cte("submitted"))
    .add_cte(_count_label(sa.bindparam("w_pair")).cte("counted"))
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
    return run_core(session, _expiring(now, user_id)).rowcount


def release_expired(*, session: Session, now: datetime | None = None) -> int:
    """Mark leases that ran out as expired; returns how many. (Their slots were free already.)"""
    return _expire(session, now or utcnow())


# Queued pairs short of their labels, in each queue counted as work: index-only counts over the
# claim indexes, as columns of one statement.
_QUEUED_SHORT = tuple(
    sa.select(sa.func.count())
    .select_from(_PAIR)
    .with_hint(_PAIR, queue.hint, "sqlite")
    .where(_short(queue))
    .scalar_subquery()
    for queue in _COUNTED
)
# Of those, the ones this user cannot get (not free for them): found among the pairs they
# claimed before and those with live leases, a few rows, never by checking every pair.
_TAKEN = (
    sa.select(sa.func.count())
    .select_from(_PAIR)
    .where(
        _PAIR.c.id.in_(
            sa.union(
                sa.select(_ASSIGNMENT.c.pair_id).where(_ASSIGNMENT.c.user_id == _USER_ID),
                sa.select(_ASSIGNMENT.c.pair_id).where(_LIVE, _ASSIGNMENT.c.expires_at > _NOW),
            )
        ),
        sa.or_(*(_short(queue) for queue in _COUNTED)),
        sa.not_(_free_for(_USER_ID, _NOW)),
    )
)
_LABELED_SINCE = sa.select(sa.func.count(_LABEL.c.id)).where(
    _LABEL.c.user_id == _USER_ID,
    _LABEL.c.created_at >= sa.bindparam("since", type_=_LABEL.c.created_at.type),
)


# (labeled today, taken) for queue_stats in one statement, and with the queue's counts after them
# when the caller has none: a round trip each would cost PostgreSQL's labeling click more than
# running them (about 0.2 ms each between the server and the database, by pg_stat_statements
# and the processes' CPU times, 50 clients).
_STATS = sa.select(_LABELED_SINCE.scalar_subquery(), _TAKEN.scalar_subquery())
_STATS_COUNTING = _STATS.add_columns(*_QUEUED_SHORT)


def queue_stats(
    *,
    session: Session,
    user_id: int,
    now: datetime | None = None,
    queued_short: int | None = None,
    holds_pair: bool | None = None,
) -> dict[str, int]:
    """{labeled_today: this user's labels since 00:00 UTC, queue_left: pairs they could still get
    (the one they hold included), queued_short: the queue's count it was reckoned from}.

    The pairs free for this user are counted as: queued pairs short of labels, preference and
    evaluation pairs (index-only counts over the claim indexes, the one part whose cost grows
    with the queue; or `queued_short` when the caller has it from a moment ago), less those
    this user has claimed before or that live leases fill (both found from the assignments, a
    few rows), never by checking every pair. `holds_pair`: whether the user
    holds a lease, when the caller knows (it has just claimed in this transaction)."""
    now = now or utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    params = {"user_id": user_id, "since": midnight, "now": now}
    if queued_short is None:
        labeled_today, taken, *counts = run_core(session, _STATS_COUNTING, params).one()
        queued_short = sum(counts)
    else:
        labeled_today, taken = run_core(session, _STATS, params).one()
    if holds_pair is None:
        holds_pair = _held_lease(session, user_id, now) is not None
    held = 1 if holds_pair else 0
    # max: a stale `queued_short` may already miss pairs that the assignments still count
    return {
        "labeled_today": labeled_today,
        "queue_left": max(0, queued_short - taken) + held,
        "queued_short": queued_short,
    }
