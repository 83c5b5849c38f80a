"""Policy versions (metrics, status, the deployed pointer) and the iterations that make them.

The deployed pointer is the one row with status `deployed` (a unique partial index allows no
second). `swap_deployed` moves it in the caller's transaction, so a deploy or rollback is one
commit: readers see the old version or the new one, never none or two.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from storage.crud import (
    Conflict,
    deployed_policy,
    get_iteration,
    get_policy,
    set_iteration_state,
)
from storage.models import Iteration, IterationState, Policy, PolicyStatus, utcnow


def set_policy_metrics(*, session: Session, version: int, metrics: dict[str, Any]) -> Policy:
    """Merge `metrics` (top-level keys) into the policy's metrics."""
    policy = get_policy(session=session, version=version)
    policy.metrics = {**policy.metrics, **metrics}
    session.add(policy)
    session.flush()
    return policy


def set_policy_status(*, session: Session, version: int, status: PolicyStatus) -> Policy:
    """candidate -> rejected or retired; moving the deployed pointer is `swap_deployed`'s job."""
    if status == PolicyStatus.deployed:
        raise ValueError("use swap_deployed to deploy a policy")
    policy = get_policy(session=session, version=version)
    if policy.status == PolicyStatus.deployed:
        raise Conflict(f"policy v{version} is deployed; deploy another version instead")
    policy.status = status
    session.add(policy)
    session.flush()
    return policy


def swap_deployed(*, session: Session, version: int) -> tuple[Policy | None, Policy]:
    """Deploy `version`, retiring the policy deployed before. Returns (previous, deployed)."""
    target = get_policy(session=session, version=version)
    previous = deployed_policy(session=session)
    if previous is not None and previous.id == target.id:
        return previous, target
    if previous is not None:
        previous.status = PolicyStatus.retired
        session.add(previous)
        session.flush()  # before the new row takes the status: the unique index checks per row
    target.status = PolicyStatus.deployed
    target.deployed_at = utcnow()
    session.add(target)
    session.flush()
    return previous, target


def finish_iteration(
    *,
    session: Session,
    iteration_id: int,
    state: IterationState,
    policy_out_id: int | None,
    metrics: dict[str, Any],
) -> Iteration:
    """End an evaluated iteration as deployed or rejected, with its candidate and metrics."""
    if state not in (IterationState.deployed, IterationState.rejected):
        raise ValueError(f"an iteration finishes deployed or rejected, not {state}")
    iteration = set_iteration_state(session=session, iteration_id=iteration_id, state=state)
    iteration.policy_out_id = policy_out_id
    iteration.metrics = {**iteration.metrics, **metrics}
    session.add(iteration)
    session.flush()
    return iteration


def set_iteration_metrics(*, session: Session, iteration_id: int, metrics: dict[str, Any]) -> None:
    iteration = get_iteration(session=session, iteration_id=iteration_id)
    iteration.metrics = {**iteration.metrics, **metrics}
    session.add(iteration)
    session.flush()
