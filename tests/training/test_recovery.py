"""What a restart finds: dead training jobs failed and re-queued, half-finished iterations settled.
(The re-queued job's actual run is in tests/app/test_scheduler.py and test_iteration.py.)"""

from __future__ import annotations

import subprocess
import sys

from storage import crud, jobs
from storage.db import transaction
from storage.models import Iteration, IterationState, JobStatus, PolicyStatus
from storage.policies import set_policy_metrics
from storage.settings import load_settings
from training.iteration import recover_iterations


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _checkpoint(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"0")
    return str(path)


def _setup(engine, tmp_path, state, *, job_status=JobStatus.running, attempts=0, result=None):
    with transaction(engine) as session:
        v0 = crud.create_policy(
            session=session,
            version=0,
            path=_checkpoint(tmp_path / "v0"),
            status=PolicyStatus.deployed,
        )
        iteration = crud.start_iteration(
            session=session, policy_in_id=v0.id, human_quota=1, human_budget=1
        )
        for step in (IterationState.labeling, IterationState.training, IterationState.evaluating):
            crud.set_iteration_state(session=session, iteration_id=iteration.id, state=step)
            if step == state:
                break
        job = jobs.create_job(
            session=session,
            kind="train",
            iteration_id=iteration.id,
            params={"iteration_id": iteration.id},
            attempts=attempts,
        )
        jobs.start_job(session=session, job_id=job.id, pid=_dead_pid())
        if job_status == JobStatus.succeeded:
            jobs.finish_job(session=session, job_id=job.id, result=result)
    return iteration.id, job.id


def _iteration(engine, iteration_id):
    with transaction(engine, readonly=True) as session:
        return session.get(Iteration, iteration_id)


def test_dead_training_job_is_failed_and_requeued(engine, tmp_path):
    iteration_id, job_id = _setup(engine, tmp_path, IterationState.training)
    settings = load_settings(tmp_path, loop={"max_attempts": 3})
    assert recover_iterations(engine=engine, settings=settings) == []
    with transaction(engine, readonly=True) as session:
        (retry,) = jobs.active_jobs(session=session, kind="train")
        dead = jobs.get_job(session=session, job_id=job_id)
    assert dead.status == JobStatus.failed and retry.params["retry_of"] == job_id
    assert retry.status == JobStatus.queued and retry.attempts == 1
    assert _iteration(engine, iteration_id).state == IterationState.training  # retry pending


def test_iteration_fails_when_its_job_is_out_of_attempts(engine, tmp_path):
    iteration_id, _ = _setup(engine, tmp_path, IterationState.training, attempts=2)
    settings = load_settings(tmp_path, loop={"max_attempts": 3})
    recover_iterations(engine=engine, settings=settings)
    iteration = _iteration(engine, iteration_id)
    assert iteration.state == IterationState.failed and "gone" in iteration.error
    with transaction(engine, readonly=True) as session:
        assert crud.deployed_policy(session=session).version == 0


def test_evaluated_candidate_is_gated_after_a_restart(engine, tmp_path):
    iteration_id, _ = _setup(
        engine,
        tmp_path,
        IterationState.evaluating,
        job_status=JobStatus.succeeded,
        result={"candidate_version": 1},
    )
    with transaction(engine) as session:
        crud.create_policy(session=session, version=1, path=_checkpoint(tmp_path / "v1"))
        evaluation = {"deployed_version": 0, "vs": {"v0": {"gold": {"win_rate": 0.8}}}}
        set_policy_metrics(session=session, version=1, metrics={"eval": evaluation})
    (report,) = recover_iterations(engine=engine, settings=load_settings(tmp_path))
    assert report.decision == "deployed" and report.candidate_version == 1
    iteration = _iteration(engine, iteration_id)
    assert iteration.state == IterationState.deployed
    assert iteration.metrics["gate"]["win_rate"] == 0.8
    with transaction(engine, readonly=True) as session:
        assert crud.deployed_policy(session=session).version == 1
