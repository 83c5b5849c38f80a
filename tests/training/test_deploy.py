"""The gate, atomic deploys and rollback, on real databases (checkpoints are small stand-in
directories: deploy only checks that they are complete)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import select

from storage import crud
from storage.db import transaction
from storage.models import Audit, Policy, PolicyStatus
from storage.settings import EvalSettings
from training import deploy as deploying


def _checkpoint(tmp_path, version, complete=True):
    path = tmp_path / f"v{version}"
    path.mkdir()
    (path / "config.json").write_text("{}")
    if complete:
        (path / "model.safetensors").write_bytes(b"0")
    return str(path)


def _policies(engine, tmp_path, n=3):
    with transaction(engine) as session:
        for v in range(n):
            crud.create_policy(
                session=session,
                version=v,
                path=_checkpoint(tmp_path, v),
                status=PolicyStatus.deployed if v == 0 else PolicyStatus.candidate,
            )


def _status(engine):
    with transaction(engine, readonly=True) as session:
        return {p.version: p.status.value for p in crud.list_policies(session=session)}


def test_deploy_and_rollback_round_trip(engine, tmp_path):
    _policies(engine, tmp_path)
    deploying.deploy(engine=engine, version=1, user_id=None)
    deploying.deploy(engine=engine, version=2, user_id=None)
    assert _status(engine) == {0: "retired", 1: "retired", 2: "deployed"}
    assert deploying.rollback(engine=engine).version == 1
    assert _status(engine) == {0: "retired", 1: "deployed", 2: "retired"}
    assert deploying.rollback(engine=engine).version == 0  # twice: two versions back
    with pytest.raises(deploying.DeployError, match="no earlier"):
        deploying.rollback(engine=engine)
    assert deploying.rollback(engine=engine, to_version=2).version == 2
    assert deploying.deployed_version(engine=engine) == 2
    with transaction(engine, readonly=True) as session:
        actions = [a.detail["reason"] for a in session.exec(select(Audit).order_by(Audit.id))]
    assert actions == ["manual", "manual", "rollback", "rollback", "rollback"]


def test_deploy_refuses_rejected_without_force_and_incomplete_always(engine, tmp_path):
    _policies(engine, tmp_path, n=2)
    with transaction(engine) as session:
        crud.create_policy(session=session, version=2, path=_checkpoint(tmp_path, 2, False))
    deploying.reject(engine=engine, version=1)
    with pytest.raises(deploying.DeployError, match="rejected"):
        deploying.deploy(engine=engine, version=1)
    with pytest.raises(deploying.DeployError, match="incomplete"):
        deploying.deploy(engine=engine, version=2, force=True)
    assert _status(engine)[0] == "deployed"
    deploying.deploy(engine=engine, version=1, force=True)
    assert _status(engine) == {0: "retired", 1: "deployed", 2: "candidate"}


def test_a_replica_without_the_policies_deploys_and_rolls_back_by_the_database(engine, tmp_path):
    """A replica that serves only has no policies directory: an admin's deploy or rollback there
    goes by the database (it said "checkpoint ... is incomplete"). Where the directory that holds
    the checkpoints is here, a missing checkpoint is still refused."""
    elsewhere = tmp_path / "on-the-scheduler-host" / "policies"
    with transaction(engine) as session:
        for v in range(3):
            status = PolicyStatus.deployed if v == 0 else PolicyStatus.candidate
            path = str(elsewhere / f"v{v}")
            crud.create_policy(session=session, version=v, path=path, status=status)
    deploying.deploy(engine=engine, version=1)
    deploying.deploy(engine=engine, version=2)
    assert deploying.rollback(engine=engine).version == 1
    assert _status(engine) == {0: "retired", 1: "deployed", 2: "retired"}
    with transaction(engine, readonly=True) as session:
        checked = [a.detail["checkpoint_checked"] for a in session.exec(select(Audit))]
    assert checked == [False, False, False]
    elsewhere.mkdir(parents=True)  # this host has the policies directory, and no v2 in it
    with pytest.raises(deploying.DeployError, match="incomplete"):
        deploying.deploy(engine=engine, version=2)


def test_database_refuses_a_second_deployed_policy(engine, tmp_path):
    _policies(engine, tmp_path, n=2)
    with pytest.raises(sa.exc.IntegrityError), transaction(engine) as session:
        policy = session.exec(select(Policy).where(Policy.version == 1)).one()
        policy.status = PolicyStatus.deployed
        session.add(policy)
        session.flush()
    assert _status(engine) == {0: "deployed", 1: "candidate"}


def _evaluation(gold, proxy=None, opponent=0):
    versus = {"gold": {"win_rate": gold}}
    if proxy is not None:
        versus["proxy"] = {"win_rate": proxy}
    return {"deployed_version": opponent, "vs": {f"v{opponent}": versus}}


def test_gate():
    settings = EvalSettings()
    assert deploying.gate(_evaluation(0.5), settings).passed  # reaches the threshold
    assert not deploying.gate(_evaluation(0.49, proxy=0.9), settings).passed  # gold decides
    by_proxy = deploying.gate(_evaluation(0.49, proxy=0.9), EvalSettings(gate="proxy"))
    assert by_proxy.passed and by_proxy.judge == "proxy"
    strict = EvalSettings(win_rate_threshold=0.6)
    assert not deploying.gate(_evaluation(0.55), strict).passed
    assert deploying.gate({"deployed_version": None}, settings).passed
    with pytest.raises(deploying.DeployError, match="no proxy win-rate"):
        deploying.gate(_evaluation(0.7), EvalSettings(gate="proxy"))
