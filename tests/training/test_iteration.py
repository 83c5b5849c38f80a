"""A real DPO training of an iteration in a real child process on the demo policy: it trains, evaluates, gates and
deploys; a worse candidate is rejected; a killed child is retried and the deployed policy stays.

The plumbing tests set the gate themselves (`OPEN_GATE`: any win-rate deploys), so a sampled
win-rate on a few prompts never decides them; learning is asserted with the teacher-forced DPO
reward margin on held-out pairs, a low-noise measure. The gate rule has its own tests
(tests/training/test_deploy.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlmodel import select

from storage import crud, jobs
from storage.db import transaction
from storage.models import Iteration, Job, JobStatus, Split
from tests.training.conftest import (
    OPEN_GATE,
    dpo_margin,
    labeled_iteration,
    make_loop_runtime,
    reference_pairs,
    weights,
)
from training import deploy as deploying
from training.iteration import train_iteration

pytestmark = pytest.mark.slow


@pytest.fixture
def open_gate_sqlite_rt(tmp_path, demo_policy_dir):
    """On SQLite (unless the environment names another database)."""
    rt = make_loop_runtime(tmp_path / "data", demo_policy_dir, eval=OPEN_GATE)
    yield rt
    rt.engine.dispose()


@pytest.fixture
def open_gate_rt(database, request):
    """On SQLite and on PostgreSQL: `database` names it before the runtime opens."""
    return request.getfixturevalue("open_gate_sqlite_rt")


def test_dpo_iteration_trains_evaluates_and_deploys(open_gate_rt):
    rt = open_gate_rt
    iteration_id = labeled_iteration(rt, 24)
    report = train_iteration(engine=rt.engine, settings=rt.settings, continue_loop=False)
    assert report.decision == "deployed", report
    assert report.candidate_version == 1 and report.attempts == 1

    with transaction(rt.engine, readonly=True) as session:
        job = session.get(Job, report.job_id)
        candidate = crud.get_policy(session=session, version=1)
        v0 = crud.get_policy(session=session, version=0)
        iteration = session.get(Iteration, iteration_id)
    # the job row carries progress and TRL's metrics; the log is in the data directory
    assert job.status == JobStatus.succeeded and job.progress == 1.0
    train = job.result["train"]
    assert train["final_loss"] is not None and train["reward_margin"] is not None
    assert train["reward_accuracy"] is not None and train["n_pairs"] == 24
    assert job.result["latest"]["step"] == train["steps"]  # progress written while training
    assert Path(job.log_path).parent == rt.settings.data_dir / "logs"
    assert "DPO on 24 pairs" in Path(job.log_path).read_text()
    # the candidate: a complete checkpoint with the config that produced it, now deployed
    assert deploying.checkpoint_complete(candidate.path)
    assert (Path(candidate.path) / "prefloop_policy.json").is_file()
    assert candidate.config["ref_version"] == 0 and candidate.config["init_version"] == 0
    assert candidate.status == "deployed" and v0.status == "retired"
    assert candidate.metrics["eval"]["vs"]["v0"]["gold"]["n"] == 8
    assert iteration.state == "deployed" and iteration.policy_out_id == candidate.id
    assert iteration.training_at and iteration.evaluating_at and iteration.finished_at
    assert not list((rt.settings.data_dir / "policies").glob(".job-*"))

    # training moved the parameters and raised the chosen-over-rejected margin
    before, after = weights(v0.path), weights(candidate.path)
    assert any(not (before[k] == after[k]).all() for k in before)
    # on held-out prompts it never trained on; v0 against itself: exactly 0
    assert dpo_margin(candidate.path, v0.path, reference_pairs(rt, Split.eval, 16)) > 1.0
    assert train["first_loss"] > train["final_loss"]


def test_gate_rejects_a_worse_candidate(tmp_path, demo_policy_dir):
    # Enough steps on the flipped labels that the candidate really is worse: with 3 steps its
    # seeded samples can equal v0's, every comparison ties and the win-rate is exactly 0.5.
    dpo = {"num_train_epochs": 4, "per_device_train_batch_size": 8, "learning_rate": 2e-3}
    rt = make_loop_runtime(tmp_path / "data", demo_policy_dir, dpo=dpo)
    iteration_id = labeled_iteration(rt, 24, flip=True)  # annotators who prefer the worst reply
    report = train_iteration(engine=rt.engine, settings=rt.settings, continue_loop=False)
    assert report.decision == "rejected", report
    assert report.gate["judge"] == "gold" and report.gate["win_rate"] < 0.5
    with transaction(rt.engine, readonly=True) as session:
        assert crud.deployed_policy(session=session).version == 0
        candidate = crud.get_policy(session=session, version=1)
        assert candidate.status == "rejected"
        assert session.get(Iteration, iteration_id).state == "rejected"
    # it learned the flipped preference: the worst reply is now the likelier one, held out
    assert (
        dpo_margin(
            candidate.path,
            rt.settings.data_dir / "policies" / "v0",
            reference_pairs(rt, Split.eval, 16),
        )
        < -1.0
    )
    with pytest.raises(deploying.DeployError, match="force"):
        deploying.deploy(engine=rt.engine, version=1)


def test_killed_training_child_is_retried_and_deployed_policy_stays(open_gate_sqlite_rt):
    rt = open_gate_sqlite_rt
    labeled_iteration(rt, 16)
    seen = {}

    def kill_once(proc):
        # Kill as soon as the child has taken the job (phase "data": it is loading the model and
        # is about to train). Waiting for a "training" heartbeat races a fast machine, where
        # 16 pairs train in under a heartbeat interval and the child may be gone before the kill.
        if seen:
            return
        deadline = time.monotonic() + 120
        phase = None
        while time.monotonic() < deadline and proc.poll() is None:
            with transaction(rt.engine, readonly=True) as session:
                job = session.exec(select(Job).order_by(Job.id.desc())).first()
            phase = job.result.get("phase") if job.status == JobStatus.running else None
            if phase in ("data", "training"):
                break
            time.sleep(0.02)
        if proc.poll() is not None:
            seen["exited before the kill, in phase"] = phase
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with transaction(rt.engine, readonly=True) as session:
            deployed = crud.deployed_policy(session=session)
        seen["deployed"] = (deployed.version, deploying.checkpoint_complete(deployed.path))

    report = train_iteration(
        engine=rt.engine, settings=rt.settings, continue_loop=False, on_start=kill_once
    )
    assert seen.get("deployed") == (0, True), seen  # right after the kill: v0, whole
    assert report.decision == "deployed" and report.attempts == 2
    with transaction(rt.engine, readonly=True) as session:
        first, retry = jobs.list_jobs(session=session, kind="train")[::-1]
    assert first.status == JobStatus.failed and "SIGKILL" in first.error
    assert retry.status == JobStatus.succeeded and retry.params["retry_of"] == first.id
    assert not list((rt.settings.data_dir / "policies").glob(".job-*"))


def test_scheduler_restart_retries_the_interrupted_round(open_gate_rt):
    """prefloop died mid-training (its child too): the restarted scheduler fails the dead job,
    runs the retry, and the iteration ends; the deployed policy was whole all along."""
    import subprocess
    import sys

    from app.scheduler import start_scheduler
    from training.iteration import queue_training

    rt = open_gate_rt
    iteration_id = labeled_iteration(rt, 16)
    job = queue_training(engine=rt.engine, settings=rt.settings)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with transaction(rt.engine) as session:
        jobs.start_job(session=session, job_id=job.id, pid=dead.pid)

    handle = start_scheduler(rt)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with transaction(rt.engine, readonly=True) as session:
                iteration = session.get(Iteration, iteration_id)
            if iteration.state in ("deployed", "rejected", "failed"):
                break
            time.sleep(1)
    finally:
        handle.shutdown()
    assert iteration.state == "deployed", iteration.error
    with transaction(rt.engine, readonly=True) as session:
        first, retry = jobs.list_jobs(session=session, kind="train")[::-1]
        deployed = crud.deployed_policy(session=session)
    assert first.status == JobStatus.failed and "gone" in first.error
    assert retry.status == JobStatus.succeeded and retry.attempts == 1
    assert deploying.checkpoint_complete(deployed.path)
