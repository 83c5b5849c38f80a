"""The deploy gate, atomic deploys, and rollback.

A candidate is deployed when its held-out win-rate against the policy deployed at evaluation time
reaches `eval.win_rate_threshold` (by the gold judge when there is one and `eval.gate` is auto or
human, else by the proxy); otherwise it is marked rejected and the deployed policy stays. Under
`eval.gate = "human"` the human votes then confirm the deploy or roll it back
(training/human_eval.py). An admin may
deploy any complete version, a rejected one with `force`.

The checkpoint is already complete on disk (training renames a finished temporary directory into
place); deploying moves the deployed pointer in one transaction, with an audit row. Generation
reads the deployed policy's path at the start of each iteration, so the next one loads the new
version; a long-lived backend compares `deployed_version` with the version it holds and reloads
(transformers: load again; vLLM: `reload_weights`, or a new engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage import crud
from storage.db import transaction
from storage.models import Policy, PolicyStatus
from storage.policies import set_policy_status, swap_deployed
from storage.settings import EvalSettings


class DeployError(ValueError):
    pass


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def checkpoint_complete(path: str | Path) -> bool:
    """A loadable Hugging Face checkpoint: a config and its weights (or an index of shards that
    are all present). A hub id (not a local directory) counts as complete."""
    path = Path(path)
    if not path.exists() and not str(path).startswith(("/", ".")) and str(path).count("/") <= 1:
        return True  # a hub id, resolved by transformers itself
    if not (path / "config.json").is_file():
        return False
    for name in WEIGHT_FILES:
        candidate = path / name
        if not candidate.is_file():
            continue
        if name.endswith(".index.json"):
            import json

            shards = set(json.loads(candidate.read_text())["weight_map"].values())
            return all((path / shard).is_file() for shard in shards)
        return True
    return False


def checkpoint_elsewhere(path: str | Path) -> bool:
    """Whether this host has no sight of the checkpoint: not even the directory that holds it,
    as on a replica that serves only (the scheduler's host keeps the policies). A deploy there
    goes by the database (training registers a checkpoint once it is complete on disk); where
    the directory that holds it is here, a checkpoint missing from it is incomplete."""
    path = Path(path)
    return path.is_absolute() and not path.parent.exists()


@dataclass(frozen=True)
class GateResult:
    passed: bool
    win_rate: float | None
    judge: str | None  # "gold" or "proxy": whose win-rate decided
    opponent: int | None  # the version it was measured against
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "win_rate": self.win_rate,
            "judge": self.judge,
            "opponent": self.opponent,
            "threshold": self.threshold,
        }


def gate(evaluation: dict[str, Any], settings: EvalSettings) -> GateResult:
    """Whether an evaluated candidate may be deployed (`evaluation`: `Policy.metrics["eval"]`)."""
    opponent = evaluation.get("deployed_version")
    threshold = settings.win_rate_threshold
    if opponent is None:
        return GateResult(True, None, None, None, threshold)  # nothing deployed to beat
    versus = evaluation.get("vs", {}).get(f"v{opponent}", {})
    order = {
        "auto": ("gold", "proxy"),
        "human": ("gold", "proxy"),  # the automatic part; the human votes decide later
        "judge": ("gold",),
        "proxy": ("proxy",),
    }[settings.gate]
    for judge in order:
        if judge in versus:
            rate = versus[judge]["win_rate"]
            return GateResult(rate >= threshold, rate, judge, opponent, threshold)
    raise DeployError(
        f"no {settings.gate} win-rate against v{opponent} to gate on "
        f"(have: {sorted(versus) or 'none'}); configure eval.judge or fit a proxy first"
    )


def deploy(
    *,
    engine,
    version: int,
    user_id: int | None = None,
    force: bool = False,
    reason: str = "manual",
) -> Policy:
    """Make `version` the deployed policy (one transaction, audited). A rejected version needs
    `force`; an incomplete checkpoint is refused whatever `force` says (one this host cannot see,
    `checkpoint_elsewhere`, goes by the database)."""
    with transaction(engine) as session:
        policy = crud.get_policy(session=session, version=version)
        if policy.status == PolicyStatus.deployed:
            return policy
        if policy.status == PolicyStatus.rejected and not force:
            raise DeployError(f"policy v{version} was rejected by the gate; deploy it with force")
        elsewhere = checkpoint_elsewhere(policy.path)
        if not elsewhere and not checkpoint_complete(policy.path):
            raise DeployError(f"policy v{version}: checkpoint at {policy.path} is incomplete")
        previous, deployed = swap_deployed(session=session, version=version)
        crud.record_audit(
            session=session,
            user_id=user_id,
            action="policy.deploy",
            detail={
                "version": version,
                "previous": previous.version if previous else None,
                "forced": force,
                "reason": reason,
                "checkpoint_checked": not elsewhere,
            },
        )
        return deployed


def reject(*, engine, version: int, detail: dict[str, Any] | None = None) -> Policy:
    with transaction(engine) as session:
        policy = set_policy_status(session=session, version=version, status=PolicyStatus.rejected)
        crud.record_audit(
            session=session,
            user_id=None,
            action="policy.reject",
            detail={"version": version, **(detail or {})},
        )
        return policy


def rollback(*, engine, to_version: int | None = None, user_id: int | None = None) -> Policy:
    """Deploy an earlier version: `to_version`, or by default the newest retired version older
    than the deployed one (so rolling back twice goes back two versions)."""
    with transaction(engine, readonly=True) as session:
        current = crud.deployed_policy(session=session)
        policies = crud.list_policies(session=session)
    if to_version is None:
        if current is None:
            raise DeployError("no policy is deployed: nothing to roll back from")
        earlier = [
            p
            for p in policies
            if p.version < current.version
            and p.status == PolicyStatus.retired
            and (checkpoint_elsewhere(p.path) or checkpoint_complete(p.path))
        ]
        if not earlier:
            raise DeployError(
                f"no earlier deployed version to roll back to from v{current.version}"
            )
        to_version = earlier[-1].version
    elif current is not None and to_version == current.version:
        raise DeployError(f"policy v{to_version} is the deployed one already")
    return deploy(engine=engine, version=to_version, user_id=user_id, force=True, reason="rollback")


def deployed_version(*, engine) -> int | None:
    """The deployed version now: what a generation backend compares with the one it holds."""
    with transaction(engine, readonly=True) as session:
        policy = crud.deployed_policy(session=session)
        return policy.version if policy else None
