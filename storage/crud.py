"""Data access: plain keyword-only functions over a session the caller got from `transaction`.

They add and flush but never commit: the caller's transaction decides, so a multi-step change
(an import, a deploy) lands whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, func, select

from storage.db import run_core
from storage.models import (
    NOT_PREFERENCE_ROUTES,
    Audit,
    Iteration,
    IterationState,
    Label,
    Pair,
    Policy,
    PolicyStatus,
    Prompt,
    Role,
    Setting,
    Split,
    User,
    utcnow,
)
from storage.text import may_exist


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


# users


def create_user(*, session: Session, name: str, role: Role, password_hash: str | None) -> User:
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable() or " " in name:
        raise ValueError(f"user name {name!r}: 1-64 printable characters, no spaces")
    if session.exec(select(User).where(User.name == name)).first() is not None:
        raise Conflict(f"user {name!r} exists already")
    user = User(name=name, role=Role(role), password_hash=password_hash)
    session.add(user)
    session.flush()
    return user


def get_user(*, session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


_USER_CHECK = sa.select(
    User.__table__.c.name,
    User.__table__.c.role,
    User.__table__.c.active,
    User.__table__.c.password_hash,
).where(User.__table__.c.id == sa.bindparam("user_id"))


def user_check(*, session: Session, user_id: int) -> sa.Row | None:
    """(name, role, active, password_hash) of a user, or None: what every request's sign-in
    check reads, as one plain row (no ORM object to build and track)."""
    return run_core(session, _USER_CHECK, {"user_id": user_id}).first()


def get_user_by_name(*, session: Session, name: str) -> User | None:
    if not may_exist(name):
        return None
    return session.exec(select(User).where(User.name == name)).first()


def get_user_by_token_hash(*, session: Session, token_hash: str) -> User | None:
    return session.exec(select(User).where(User.token_hash == token_hash)).first()


def list_users(*, session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(User.id)))


def update_user(*, session: Session, user_id: int, **changes: Any) -> User:
    """Change role, active, password_hash or token_hash."""
    allowed = {"role", "active", "password_hash", "token_hash"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"cannot change user fields {sorted(unknown)}")
    user = get_user(session=session, user_id=user_id)
    for key, value in changes.items():
        setattr(user, key, Role(value) if key == "role" else value)
    session.add(user)
    session.flush()
    return user


def count_admins(*, session: Session) -> int:
    query = select(func.count()).select_from(User).where(User.role == Role.admin, User.active)
    return session.exec(query).one()


# prompts


@dataclass(frozen=True)
class PromptIn:
    text: str
    messages: list[dict[str, str]] | None = None
    source: str = ""
    split: Split = Split.train


def prompt_hash(text: str, messages: list[dict[str, str]] | None = None) -> str:
    canonical = json.dumps(messages, sort_keys=True) if messages else text.strip()
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def add_prompts(*, session: Session, prompts: Iterable[PromptIn]) -> tuple[int, int]:
    """Insert prompts, skipping any already stored or repeated in `prompts`.

    Returns (added, skipped)."""
    batch: dict[str, PromptIn] = {}
    skipped = 0
    for item in prompts:
        key = prompt_hash(item.text, item.messages)
        if key in batch:
            skipped += 1
        else:
            batch[key] = item
    existing: set[str] = set()
    keys = list(batch)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        existing.update(
            session.exec(select(Prompt.content_hash).where(Prompt.content_hash.in_(chunk)))
        )
    skipped += len(existing)
    rows = [
        Prompt(
            text=item.text,
            messages=item.messages,
            content_hash=key,
            source=item.source,
            split=Split(item.split),
        )
        for key, item in batch.items()
        if key not in existing
    ]
    session.add_all(rows)
    session.flush()
    return len(rows), skipped


# policies and iterations


def list_prompts(
    *,
    session: Session,
    split: Split | None = None,
    active: bool | None = None,
    contains: str | None = None,
    limit: int = 50,
) -> list[Prompt]:
    """Prompts in id order: of one split, active or not, holding `contains` (case-insensitive)."""
    query = select(Prompt).order_by(Prompt.id).limit(limit)
    if split is not None:
        query = query.where(Prompt.split == split)
    if active is not None:
        query = query.where(Prompt.active == active)
    if contains:
        query = query.where(func.lower(Prompt.text).contains(contains.lower(), autoescape=True))
    return list(session.exec(query))


def set_prompts_active(*, session: Session, ids: Iterable[int], active: bool) -> int:
    """Take prompts out of rounds and evaluations (`active` False) or put them back; returns how
    many changed. An unknown id raises NotFound naming it, and nothing changes."""
    wanted = sorted(set(ids))
    found = set(session.exec(select(Prompt.id).where(Prompt.id.in_(wanted))))
    if missing := [i for i in wanted if i not in found]:
        raise NotFound(f"no prompt {', '.join(map(str, missing))}")
    prompts = session.exec(select(Prompt).where(Prompt.id.in_(wanted), Prompt.active != active))
    changed = 0
    for prompt in prompts:
        prompt.active = active
        session.add(prompt)
        changed += 1
    session.flush()
    return changed


def create_policy(
    *,
    session: Session,
    version: int,
    path: str,
    status: PolicyStatus = PolicyStatus.candidate,
    parent_id: int | None = None,
    iteration_k: int | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Policy:
    if session.exec(select(Policy).where(Policy.version == version)).first() is not None:
        raise Conflict(f"policy version {version} exists already")
    policy = Policy(
        version=version,
        path=path,
        status=status,
        parent_id=parent_id,
        iteration_k=iteration_k,
        config=config or {},
        metrics=metrics or {},
        deployed_at=utcnow() if status == PolicyStatus.deployed else None,
    )
    session.add(policy)
    session.flush()
    return policy


def deployed_policy(*, session: Session) -> Policy | None:
    query = select(Policy).where(Policy.status == PolicyStatus.deployed)
    return session.exec(query).first()


def get_policy(*, session: Session, version: int) -> Policy:
    policy = session.exec(select(Policy).where(Policy.version == version)).first()
    if policy is None:
        raise NotFound(f"no policy version {version}")
    return policy


def get_policy_by_id(*, session: Session, policy_id: int) -> Policy:
    policy = session.get(Policy, policy_id)
    if policy is None:
        raise NotFound(f"no policy with id {policy_id}")
    return policy


def list_policies(*, session: Session) -> list[Policy]:
    return list(session.exec(select(Policy).order_by(Policy.version)))


def current_iteration(*, session: Session) -> Iteration | None:
    return session.exec(select(Iteration).order_by(Iteration.k.desc())).first()


def list_iterations(*, session: Session) -> list[Iteration]:
    return list(session.exec(select(Iteration).order_by(Iteration.k)))


# generating -> labeling -> training -> evaluating -> deployed | rejected; any open state -> failed
_NEXT_STATES: dict[IterationState, set[IterationState]] = {
    IterationState.generating: {IterationState.labeling},
    IterationState.labeling: {IterationState.training},
    IterationState.training: {IterationState.evaluating},
    IterationState.evaluating: {IterationState.deployed, IterationState.rejected},
}
_STATE_STAMPS = {
    IterationState.labeling: "labeling_at",
    IterationState.training: "training_at",
    IterationState.evaluating: "evaluating_at",
    IterationState.deployed: "finished_at",
    IterationState.rejected: "finished_at",
    IterationState.failed: "finished_at",
}
OPEN_STATES = frozenset(_NEXT_STATES)


def start_iteration(
    *, session: Session, policy_in_id: int | None, human_quota: int, human_budget: int
) -> Iteration:
    """Open iteration k+1 in `generating`; refuses while another iteration is still open."""
    last = current_iteration(session=session)
    if last is not None and last.state in OPEN_STATES:
        raise Conflict(f"iteration {last.k} is still {last.state}")
    iteration = Iteration(
        k=0 if last is None else last.k + 1,
        policy_in_id=policy_in_id,
        human_quota=human_quota,
        human_budget=human_budget,
    )
    session.add(iteration)
    session.flush()
    return iteration


def get_iteration(*, session: Session, iteration_id: int) -> Iteration:
    iteration = session.get(Iteration, iteration_id)
    if iteration is None:
        raise NotFound(f"no iteration with id {iteration_id}")
    return iteration


def get_iteration_by_k(*, session: Session, k: int) -> Iteration:
    iteration = session.exec(select(Iteration).where(Iteration.k == k)).first()
    if iteration is None:
        raise NotFound(f"no iteration {k}")
    return iteration


def set_iteration_state(
    *, session: Session, iteration_id: int, state: IterationState, error: str | None = None
) -> Iteration:
    """Move an iteration along its lifecycle, stamping the time; an illegal move raises."""
    iteration = get_iteration(session=session, iteration_id=iteration_id)
    allowed = _NEXT_STATES.get(iteration.state, set())
    if state != IterationState.failed and state not in allowed:
        raise Conflict(f"iteration {iteration.k}: cannot go from {iteration.state} to {state}")
    if state == IterationState.failed and iteration.state not in OPEN_STATES:
        raise Conflict(f"iteration {iteration.k} is {iteration.state} already")
    iteration.state = state
    iteration.error = error
    if stamp := _STATE_STAMPS.get(state):
        setattr(iteration, stamp, utcnow())
    session.add(iteration)
    session.flush()
    return iteration


# settings changed at run time, audit


_OVERRIDES = sa.select(Setting.__table__.c.key, Setting.__table__.c.value)


def get_overrides(*, session: Session) -> dict[str, Any]:
    """The admins' run-time settings, {dotted key: value} (plain rows: read on every click)."""
    return dict(run_core(session, _OVERRIDES).all())


def set_overrides(*, session: Session, values: dict[str, Any], user_id: int | None) -> None:
    for key, value in values.items():
        row = session.get(Setting, key) or Setting(key=key)
        row.value = value
        row.updated_by = user_id
        row.updated_at = utcnow()
        session.add(row)
    session.flush()


def record_audit(
    *, session: Session, user_id: int | None, action: str, detail: dict[str, Any] | None = None
) -> Audit:
    entry = Audit(user_id=user_id, action=action, detail=detail or {})
    session.add(entry)
    session.flush()
    return entry


# status


def table_counts(*, session: Session) -> dict[str, int]:
    counts = {}
    for table in SQLModel.metadata.sorted_tables:
        counts[table.name] = session.exec(select(func.count()).select_from(table)).one()
    return counts


def label_counts(
    *, session: Session, iteration_id: int | None = None, leave_out: Collection[int] = ()
) -> dict[str, int]:
    """Preference labels per source (human, proxy, seed), optionally for one iteration's pairs;
    votes on evaluation pairs (`storage.evaluation.eval_queue_counts`) and labels on gold pairs
    (`storage.gold.gold_counts`) are not among them."""
    query = (
        select(Label.source, func.count())
        .join(Pair, Pair.id == Label.pair_id)
        .where(Pair.route.not_in(NOT_PREFERENCE_ROUTES))
        .group_by(Label.source)
    )
    if iteration_id is not None:
        query = query.where(Pair.iteration_id == iteration_id)
    if leave_out:  # flagged annotators' labels (storage/gold.py)
        query = query.where(
            sa.or_(Label.user_id.is_(None), Label.user_id.not_in(sorted(leave_out)))
        )
    return {str(source): n for source, n in session.exec(query)}


def database_ok(*, session: Session) -> bool:
    return session.exec(sa.select(sa.literal(1))).one()[0] == 1
