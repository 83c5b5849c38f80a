"""Job rows: the heavy steps (training, evaluation) as rows a restart can find.

A job is created `queued`, moves to `running` with the pid of the process doing it, beats its
heartbeat while it works, and ends `succeeded` (with its result) or `failed` (with its error and
its kind: `transient` when a retry may succeed, `permanent` when the job's own code raised and
would raise again). Only a transient failure is retried (`retry_job`). `recover_stale` is what a
restarted scheduler runs first: a `running` job whose process is gone, or whose heartbeat
stopped, is marked failed and a retry is queued in its place (attempts + 1), up to a limit;
nothing is silently lost.

Like crud, these functions add and flush; the caller's `transaction` commits.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from storage.crud import Conflict, NotFound
from storage.models import ErrorKind, Job, JobStatus, utcnow

ACTIVE = (JobStatus.queued, JobStatus.running)


def create_job(
    *,
    session: Session,
    kind: str,
    params: dict[str, Any] | None = None,
    iteration_id: int | None = None,
    attempts: int = 0,
) -> Job:
    job = Job(kind=kind, params=params or {}, iteration_id=iteration_id, attempts=attempts)
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    return job


def list_jobs(
    *, session: Session, kind: str | None = None, status: JobStatus | None = None, limit: int = 50
) -> list[Job]:
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if status is not None:
        query = query.where(Job.status == status)
    return list(session.exec(query))


def active_jobs(*, session: Session, kind: str | None = None) -> list[Job]:
    """Queued and running jobs, oldest first."""
    query = select(Job).where(Job.status.in_(ACTIVE)).order_by(Job.id)
    if kind is not None:
        query = query.where(Job.kind == kind)
    return list(session.exec(query))


def start_job(*, session: Session, job_id: int, pid: int, log_path: str | None = None) -> Job:
    """queued -> running, owned by process `pid`."""
    job = get_job(session=session, job_id=job_id)
    if job.status != JobStatus.queued:
        raise Conflict(f"job {job_id} is {job.status}, not queued")
    job.status = JobStatus.running
    job.pid = pid
    job.started_at = job.heartbeat = utcnow()
    if log_path is not None:
        job.log_path = log_path
    session.add(job)
    session.flush()
    return job


def heartbeat(
    *,
    session: Session,
    job_id: int,
    progress: float | None = None,
    result: dict[str, Any] | None = None,
) -> Job:
    """Mark the job alive; optionally set its progress (0..1) and merge keys into its result."""
    job = get_job(session=session, job_id=job_id)
    if job.status != JobStatus.running:
        raise Conflict(f"job {job_id} is {job.status}, not running")
    job.heartbeat = utcnow()
    if progress is not None:
        job.progress = min(1.0, max(0.0, progress))
    if result:
        job.result = {**job.result, **result}  # a new dict, so the JSON column is marked dirty
    session.add(job)
    session.flush()
    return job


def finish_job(*, session: Session, job_id: int, result: dict[str, Any] | None = None) -> Job:
    job = get_job(session=session, job_id=job_id)
    if job.status != JobStatus.running:
        raise Conflict(f"job {job_id} is {job.status}, not running")
    job.status = JobStatus.succeeded
    job.progress = 1.0
    job.finished_at = job.heartbeat = utcnow()
    if result:
        job.result = {**job.result, **result}
    session.add(job)
    session.flush()
    return job


def fail_job(
    *, session: Session, job_id: int, error: str, kind: ErrorKind = ErrorKind.transient
) -> Job:
    """Any unfinished job -> failed with `error` of `kind`. A job that ended already is left as
    it is."""
    job = get_job(session=session, job_id=job_id)
    if job.status in ACTIVE:
        job.status = JobStatus.failed
        job.error = error
        job.error_kind = kind
        job.finished_at = utcnow()
        session.add(job)
        session.flush()
    return job


def retry_job(*, session: Session, job_id: int, max_attempts: int) -> Job | None:
    """Queue a copy of failed job `job_id` with attempts + 1; None once `max_attempts` is spent,
    or when its failure is permanent (a retry would fail the same way).

    The copy's params carry the failed attempt's result as `previous_result`, so a job can pick
    up where its last attempt got to."""
    job = get_job(session=session, job_id=job_id)
    if job.status != JobStatus.failed:
        raise Conflict(f"job {job_id} is {job.status}, not failed")
    if job.error_kind == ErrorKind.permanent or job.attempts + 1 >= max_attempts:
        return None
    params = {**job.params, "retry_of": job.id, "previous_result": dict(job.result)}
    return create_job(
        session=session,
        kind=job.kind,
        params=params,
        iteration_id=job.iteration_id,
        attempts=job.attempts + 1,
    )


def process_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this machine (a zombie counts as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) said it exists


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=utcnow().tzinfo)


def recover_stale(
    *,
    session: Session,
    stale_after: timedelta,
    max_attempts: int,
    check_pid: bool = True,
) -> list[tuple[Job, Job | None]]:
    """Fail every running job whose process is gone or whose heartbeat is older than
    `stale_after`, and queue its retry. Returns (failed job, retry or None) pairs.

    `check_pid` looks the pid up on this machine; turn it off when jobs run on other hosts
    (then only the heartbeat decides)."""
    now = utcnow()
    recovered = []
    for job in session.exec(select(Job).where(Job.status == JobStatus.running).order_by(Job.id)):
        beat = _aware(job.heartbeat or job.started_at or job.created_at)
        if check_pid and not process_alive(job.pid):
            reason = f"process {job.pid} is gone (killed, or prefloop restarted)"
        elif now - beat > stale_after:
            reason = f"no heartbeat since {beat.isoformat(timespec='seconds')}"
        else:
            continue
        fail_job(session=session, job_id=job.id, error=reason)
        recovered.append(
            (job, retry_job(session=session, job_id=job.id, max_attempts=max_attempts))
        )
    return recovered


def set_log_path(*, session: Session, job_id: int, log_path: str) -> Job:
    job = get_job(session=session, job_id=job_id)
    job.log_path = log_path
    session.add(job)
    session.flush()
    return job
