"""The training child's failures: what a retry can fix is retried, what would recur fails the
iteration at once with its message. The child is the real `python -m training.dpo_job`, on an iteration
with no preferences to train on (it fails before loading any model)."""

from __future__ import annotations

import os
import signal

import pytest
from sqlmodel import select

from storage import jobs
from storage.db import transaction
from storage.models import ErrorKind, Iteration, IterationState, Job, JobStatus
from tests.training.conftest import unlabeled_iteration_runtime
from training.iteration import TRAIN, queue_training, train_iteration
from training.runner import error_kind


def test_out_of_memory_is_transient_and_the_jobs_own_errors_are_permanent():
    import torch

    assert error_kind(MemoryError()) == ErrorKind.transient
    assert error_kind(torch.OutOfMemoryError("CUDA out of memory")) == ErrorKind.transient
    assert error_kind(ValueError("no preferences")) == ErrorKind.permanent
    assert error_kind(RuntimeError("bad config")) == ErrorKind.permanent


def test_retry_job_queues_transient_failures_only(engine):
    with transaction(engine) as session:
        killed = jobs.create_job(session=session, kind=TRAIN)
        raised = jobs.create_job(session=session, kind=TRAIN)
        for job in (killed, raised):
            jobs.start_job(session=session, job_id=job.id, pid=os.getpid())
        jobs.fail_job(session=session, job_id=killed.id, error="killed by signal SIGKILL")
        jobs.fail_job(
            session=session, job_id=raised.id, error="ValueError: x", kind=ErrorKind.permanent
        )
        assert jobs.retry_job(session=session, job_id=killed.id, max_attempts=3) is not None
        assert jobs.retry_job(session=session, job_id=raised.id, max_attempts=3) is None


@pytest.fixture
def rt(tmp_path, database):
    """A data directory whose iteration 0 is labeling with no labels at all."""
    rt = unlabeled_iteration_runtime(tmp_path, loop={"max_attempts": 3, "auto_continue": False})
    yield rt
    rt.engine.dispose()


def _train_jobs(rt) -> list[Job]:
    with transaction(rt.engine, readonly=True) as session:
        return list(session.exec(select(Job).where(Job.kind == TRAIN).order_by(Job.id)))


def _round(rt, **kwargs):
    settings = rt.effective_settings()
    job = queue_training(engine=rt.engine, settings=settings, refit_proxy=False, evaluate=False)
    return train_iteration(engine=rt.engine, settings=settings, job_id=job.id, **kwargs)


def test_an_error_that_would_recur_fails_the_iteration_at_once(rt):
    report = _round(rt)
    assert report.decision == "failed"
    assert "no preferences to train on" in report.error
    (job,) = _train_jobs(rt)  # one attempt of [loop] max_attempts = 3
    assert job.status == JobStatus.failed and job.error_kind == ErrorKind.permanent
    with transaction(rt.engine, readonly=True) as session:
        iteration = session.exec(select(Iteration)).one()
    assert iteration.state == IterationState.failed
    assert "no preferences to train on" in iteration.error


def test_a_killed_child_is_retried(rt):
    killed = []

    def kill_first(proc):
        if not killed:
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)

    report = _round(rt, on_start=kill_first)
    first, second = _train_jobs(rt)
    assert "SIGKILL" in first.error and first.error_kind == ErrorKind.transient
    assert second.params["retry_of"] == first.id and second.error_kind == ErrorKind.permanent
    assert report.decision == "failed" and "no preferences to train on" in report.error
