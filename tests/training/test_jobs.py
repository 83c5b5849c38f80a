"""Job rows: lifecycle, and what a restart does with jobs whose process died."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from storage import jobs
from storage.crud import Conflict
from storage.db import transaction
from storage.models import JobStatus, utcnow


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_job_lifecycle(engine):
    with transaction(engine) as session:
        job = jobs.create_job(session=session, kind="train", params={"x": 1})
        assert job.status == JobStatus.queued
        jobs.start_job(session=session, job_id=job.id, pid=os.getpid(), log_path="/tmp/log")
        jobs.heartbeat(session=session, job_id=job.id, progress=0.5, result={"loss": 0.6})
        jobs.heartbeat(session=session, job_id=job.id, result={"margin": 0.2})
    with transaction(engine, readonly=True) as session:
        job = jobs.get_job(session=session, job_id=job.id)
        assert job.status == JobStatus.running and job.progress == 0.5
        assert job.result == {"loss": 0.6, "margin": 0.2}
    with transaction(engine) as session:
        jobs.finish_job(session=session, job_id=job.id, result={"done": True})
        with pytest.raises(Conflict):
            jobs.start_job(session=session, job_id=job.id, pid=1)
    with transaction(engine, readonly=True) as session:
        job = jobs.get_job(session=session, job_id=job.id)
    assert job.status == JobStatus.succeeded and job.progress == 1.0
    assert job.result == {"loss": 0.6, "margin": 0.2, "done": True}
    assert job.finished_at is not None


def test_recover_stale_fails_dead_jobs_and_queues_retries(engine):
    with transaction(engine) as session:
        dead = jobs.create_job(session=session, kind="train", params={"a": 1})
        jobs.start_job(session=session, job_id=dead.id, pid=_dead_pid())
        jobs.heartbeat(session=session, job_id=dead.id, result={"candidate_version": 3})
        alive = jobs.create_job(session=session, kind="train")
        jobs.start_job(session=session, job_id=alive.id, pid=os.getpid())
    with transaction(engine) as session:
        recovered = jobs.recover_stale(
            session=session, stale_after=timedelta(minutes=5), max_attempts=3
        )
    assert [(d.id, r.attempts) for d, r in recovered] == [(dead.id, 1)]
    with transaction(engine, readonly=True) as session:
        failed = jobs.get_job(session=session, job_id=dead.id)
        retry = jobs.get_job(session=session, job_id=recovered[0][1].id)
        still = jobs.get_job(session=session, job_id=alive.id)
    assert failed.status == JobStatus.failed and "gone" in failed.error
    assert retry.status == JobStatus.queued and retry.kind == "train"
    assert retry.params["a"] == 1 and retry.params["retry_of"] == dead.id
    assert retry.params["previous_result"] == {"candidate_version": 3}
    assert still.status == JobStatus.running


def test_recover_stale_by_heartbeat_and_attempt_limit(engine):
    with transaction(engine) as session:
        job = jobs.create_job(session=session, kind="train", attempts=2)
        jobs.start_job(session=session, job_id=job.id, pid=os.getpid())
        job.heartbeat = utcnow() - timedelta(hours=1)
        session.add(job)
    with transaction(engine) as session:
        recovered = jobs.recover_stale(
            session=session, stale_after=timedelta(minutes=5), max_attempts=3
        )
    ((failed, retry),) = recovered
    assert failed.id == job.id and "no heartbeat" in failed.error
    assert retry is None  # third attempt was the last
    with transaction(engine, readonly=True) as session:
        assert jobs.active_jobs(session=session) == []


def test_latest_scope_trains_the_first_iteration_on_the_seed_too(engine, tmp_path):
    """Seed preferences are iteration-0 data: under data_scope "latest" the first iteration's job
    reads them beside its own labels, and a later iteration reads its own labels only."""
    from storage import crud
    from storage.models import IterationState, LabelSource, PairStatus, PairStrategy
    from storage.settings import load_settings
    from tests.factories import make_pairs, make_policy, make_user
    from tests.storage.test_preferences import label
    from training.dpo import load_preferences
    from training.iteration import queue_training

    def labeled_iteration(session, user):
        """A new iteration, labeling, with one pair the user labeled."""
        iteration = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=1, human_budget=1
        )
        (pair,) = make_pairs(session, 1, iteration_id=iteration.id)
        label(session, pair, "b", user=user)
        crud.set_iteration_state(
            session=session, iteration_id=iteration.id, state=IterationState.labeling
        )
        return iteration, pair

    settings = load_settings(tmp_path, loop={"data_scope": "latest"})
    with transaction(engine) as session:
        make_policy(session)
        ann = make_user(session)
        (seed,) = make_pairs(session, 1, strategy=PairStrategy.seed, status=PairStatus.done)
        label(session, seed, "a", source=LabelSource.seed)
        it0, own = labeled_iteration(session, ann)
    job = queue_training(engine=engine, settings=settings)
    assert (job.params["iterations"], job.params["with_seed"]) == ([0], True)
    rows = load_preferences(engine=engine, iterations=[0], with_seed=job.params["with_seed"])
    assert sorted(r.pair_id for r in rows) == sorted([seed.id, own.id])

    with transaction(engine) as session:
        jobs.start_job(session=session, job_id=job.id, pid=os.getpid())
        jobs.finish_job(session=session, job_id=job.id)
        for state in (IterationState.evaluating, IterationState.deployed):
            crud.set_iteration_state(session=session, iteration_id=it0.id, state=state)
        _, later = labeled_iteration(session, ann)
    job = queue_training(engine=engine, settings=settings)
    assert (job.params["iterations"], job.params["with_seed"]) == ([1], False)
    rows = load_preferences(engine=engine, iterations=[1], with_seed=False)
    assert [r.pair_id for r in rows] == [later.id]


@pytest.mark.parametrize(
    ("loop", "init_version", "ref_version"),
    [
        ({"reference": "sft"}, 1, 0),
        ({"reference": "previous"}, 1, None),
        ({"start": "sft", "data_scope": "all"}, 0, 0),
    ],
)
def test_the_loop_settings_name_the_models_a_round_trains_from_and_against(
    engine, tmp_path, loop, init_version, ref_version
):
    """`loop.reference`: DPO against pi_0 (the first policy), or against the deployed pi_k it
    starts from (no reference of its own: the job takes its init model as the reference).
    `loop.start`: the round starts from the deployed pi_k, or from pi_0 again, trained on every
    round's pairs (data_scope 'all': no iteration filter, the seed pairs included)."""
    from storage import crud
    from storage.models import IterationState
    from storage.settings import load_settings
    from tests.factories import make_policy
    from training.iteration import queue_training

    with transaction(engine) as session:
        make_policy(session, version=0, deployed=False)
        make_policy(session, version=1)
        iteration = crud.start_iteration(
            session=session, policy_in_id=None, human_quota=1, human_budget=1
        )
        crud.set_iteration_state(
            session=session, iteration_id=iteration.id, state=IterationState.labeling
        )
    job = queue_training(engine=engine, settings=load_settings(tmp_path, loop=loop))
    assert job.params["init_version"] == init_version
    assert job.params["ref_version"] == ref_version
    assert job.params["iterations"] is None
