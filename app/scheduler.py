"""The scheduler: APScheduler 3's BackgroundScheduler with its jobs in prefloop's database.

Requests are rows, not in-memory calls: "train now" queues a training job row
(`training.iteration.queue_training`), "generate next round" a generation job row. One persistent
APScheduler job, `prefloop.dispatch`, runs every `loop.quota_check_seconds`: it queues training
when the labeling iteration reached its human-label quota, then runs the oldest queued job, one at
a time (a process-wide lock; `queue_training` refuses a second active training job across
processes). `prefloop.train-interval` and `prefloop.train-cron` queue training on a timer when
`loop.interval_minutes` / `loop.cron` are set. The dispatch also runs an admin's request for
evaluation pairs (a job row too) and the human gate's check (training/human_eval.py). So a
request made by another process (a second replica, the CLI) is picked up too, and one made just
before a crash is still there after it. A tick with nothing queued while a round is labeled draws
what the next evaluation will need (`prepare_while_labeling`), once.

One scheduler per database: `start_scheduler` first takes the database's scheduler lock
(`storage.scheduler_lock`), and a second process that tries (another replica started without
--no-scheduler, a `prefloop loop` beside a server) is refused with SchedulerRunning, naming the
holder. The lock dies with its process, so a replica killed with kill -9 can start again at once.

On start, `recover_iterations` fails the jobs whose process died and queues their retries, and
settles an iteration left half-way; the dispatch then runs the retries.

The APScheduler jobs hold only the data directory as their argument; the runtime (settings,
engine) comes from the process that called `start_scheduler`, so no database URL or password is
pickled into the job store.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage import crud, jobs
from storage.db import transaction
from storage.models import IterationState, JobStatus
from storage.runtime import Runtime
from storage.scheduler_lock import SchedulerLock, acquire_scheduler_lock

log = logging.getLogger("prefloop.scheduler")

DISPATCH = "prefloop.dispatch"
TRAIN_INTERVAL = "prefloop.train-interval"
TRAIN_CRON = "prefloop.train-cron"
JOBS_TABLE = "apscheduler_jobs"

# The schedulers started in this process, by data directory; and the lock that keeps their heavy
# work one at a time.
_handles: dict[str, SchedulerHandle] = {}
_busy = threading.Lock()


@dataclass
class SchedulerHandle:
    scheduler: Any  # apscheduler BackgroundScheduler
    rt: Runtime
    lock: SchedulerLock

    def wake(self) -> None:
        """Run the dispatch now instead of at its next tick."""
        self.scheduler.modify_job(DISPATCH, next_run_time=datetime.now(UTC))

    def shutdown(self, wait: bool = True) -> None:
        self.scheduler.shutdown(wait=wait)
        if _handles.get(_key(self.rt)) is self:
            del _handles[_key(self.rt)]
        self.lock.release()

    @property
    def running(self) -> bool:
        return self.scheduler.running


def _key(rt: Runtime) -> str:
    return str(rt.settings.data_dir.resolve())


def start_scheduler(rt: Runtime, *, recover: bool = True) -> SchedulerHandle:
    """Start the background scheduler for `rt`; returns its handle (`.shutdown()` stops it).

    Raises SchedulerRunning when another process runs a scheduler on the same database.
    Recovers from a crash first (`recover=True`): dead jobs failed and re-queued."""
    lock = acquire_scheduler_lock(rt.engine)
    try:
        handle = _start(rt, lock, recover=recover)
    except BaseException:
        lock.release()
        raise
    log.info("scheduler started: %s", ", ".join(j.id for j in handle.scheduler.get_jobs()))
    return handle


def _start(rt: Runtime, lock: SchedulerLock, *, recover: bool) -> SchedulerHandle:
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    from training.iteration import recover_iterations

    settings = rt.effective_settings()
    if recover:
        for report in recover_iterations(engine=rt.engine, settings=settings):
            log.info("recovered iteration %s: %s", report.iteration_k, report.decision)
    key = _key(rt)
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=rt.engine, tablename=JOBS_TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=2)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        timezone=UTC,
    )
    scheduler.add_job(
        dispatch,
        IntervalTrigger(seconds=settings.loop.quota_check_seconds, timezone=UTC),
        args=[key],
        id=DISPATCH,
        name="prefloop: quota check and queued jobs",
        replace_existing=True,
        next_run_time=datetime.now(UTC),
        # A tick while an iteration trains returns at once (the lock); two instances keep APScheduler
        # from warning that it skipped one.
        max_instances=2,
    )
    timers = {
        TRAIN_INTERVAL: IntervalTrigger(minutes=settings.loop.interval_minutes, timezone=UTC)
        if settings.loop.interval_minutes
        else None,
        TRAIN_CRON: CronTrigger.from_crontab(settings.loop.cron, timezone=UTC)
        if settings.loop.cron
        else None,
    }
    handle = _handles[key] = SchedulerHandle(scheduler=scheduler, rt=rt, lock=lock)
    scheduler.start(paused=True)  # the job store is open: timers can be replaced before any runs
    for job_id, trigger in timers.items():
        if trigger is None:
            if scheduler.get_job(job_id):
                scheduler.remove_job(job_id)
            continue
        scheduler.add_job(
            timed_training,
            trigger,
            args=[key],
            id=job_id,
            name=f"prefloop: train on {job_id.rsplit('-', 1)[1]}",
            replace_existing=True,
        )
    scheduler.resume()
    return handle


def dispatch(data_dir: str) -> None:
    """The scheduler's tick: decide a deploy waiting for human votes (`eval.gate = "human"`);
    queue training if the quota is reached; run the oldest queued job."""
    from storage.gold import GoldRule
    from training.human_eval import EVAL_PAIRS, check_human_gate, run_eval_pairs_job
    from training.iteration import (
        GENERATE,
        TRAIN,
        queue_training,
        quota_reached,
        run_generation,
        train_iteration,
    )

    handle = _handles.get(data_dir)
    if handle is None or not _busy.acquire(blocking=False):
        return  # not this process's scheduler, or an iteration is training already
    rt = handle.rt
    try:
        if not handle.lock.check():
            return  # the database is down, or another process holds the lock now
        settings = rt.effective_settings()
        try:
            check_human_gate(engine=rt.engine, settings=settings)
        except Exception:
            log.exception("human gate check failed")  # the rest of the tick still runs
        gold = GoldRule.filtering(settings.labeling)
        if quota_reached(engine=rt.engine, gold=gold) is not None:
            try:
                queue_training(engine=rt.engine, settings=settings)
            except crud.Conflict as exc:
                log.debug("quota reached, training not queued: %s", exc)
        with transaction(rt.engine, readonly=True) as session:
            queued = [j for j in jobs.active_jobs(session=session) if j.status == JobStatus.queued]
        for job in queued:
            if job.kind == TRAIN:
                report = train_iteration(engine=rt.engine, settings=settings, job_id=job.id)
                log.info("iteration %s: %s", report.iteration_k, report.decision)
            elif job.kind == GENERATE:
                run_generation(engine=rt.engine, settings=settings, job_id=job.id)
            elif job.kind == EVAL_PAIRS:
                run_eval_pairs_job(engine=rt.engine, settings=settings, job_id=job.id)
            break  # one job per tick; the next tick takes the next one
        if not queued and settings.eval.prepare_while_labeling:
            prepare_while_labeling(rt, settings)
    except Exception:
        log.exception("scheduler dispatch failed")
    finally:
        _busy.release()


def prepare_while_labeling(rt: Runtime, settings) -> None:
    """An idle tick while a round is being labeled: draw what the next evaluation needs
    (`training.evaluate.prepare_baselines`; nothing once done)."""
    from training.evaluate import prepare_baselines

    with transaction(rt.engine, readonly=True) as session:
        iteration = crud.current_iteration(session=session)
    if iteration is None or iteration.state != IterationState.labeling:
        return
    started = time.monotonic()
    written = prepare_baselines(engine=rt.engine, settings=settings)
    if written:
        log.info(
            "evaluation baselines prepared while iteration %s is labeled, in %.0f s: %s",
            iteration.k,
            time.monotonic() - started,
            ", ".join(written),
        )


def timed_training(data_dir: str) -> None:
    """An interval or cron trigger: queue training for the labeling iteration, if there is one
    with new human labels."""
    from training.iteration import human_labels, queue_training

    handle = _handles.get(data_dir)
    if handle is None:
        return
    rt = handle.rt
    with transaction(rt.engine, readonly=True) as session:
        iteration = crud.current_iteration(session=session)
    if iteration is None or human_labels(engine=rt.engine, iteration_id=iteration.id) == 0:
        return
    try:
        queue_training(engine=rt.engine, settings=rt.effective_settings())
    except crud.Conflict as exc:
        log.info("timer: training not queued: %s", exc)


def _wake(rt: Runtime) -> None:
    # This process's scheduler (if any) picks a new request up now rather than at its next tick;
    # another process's picks it up at its tick.
    handle = _handles.get(_key(rt))
    if handle is not None and handle.running:
        handle.wake()


def request_training(rt: Runtime, user_id: int | None) -> int:
    """An admin's "train now": queue a training job for the labeling iteration (audited).

    Returns the job id; raises crud.Conflict when no iteration is labeling or training is queued
    or running already."""
    from training.iteration import queue_training

    job = queue_training(
        engine=rt.engine, settings=rt.effective_settings(), user_id=user_id, require_data=True
    )
    _wake(rt)
    return job.id


def request_generation(rt: Runtime, user_id: int | None) -> int:
    """An admin's "generate next round": queue a generation job (audited). Returns its id;
    raises crud.Conflict while an iteration is open or a generation is queued."""
    from training.iteration import queue_generation

    job = queue_generation(engine=rt.engine, user_id=user_id)
    _wake(rt)
    return job.id


def request_eval_pairs(
    rt: Runtime, user_id: int, *, a_version: int, b_version: int, n_prompts: int | None
) -> int:
    """An admin's "queue evaluation pairs": a job the dispatch runs (audited). Returns its id;
    raises crud.NotFound for an unknown version, ValueError for the same version twice."""
    from training.human_eval import request_eval_pairs as queue_request

    job = queue_request(
        engine=rt.engine,
        a_version=a_version,
        b_version=b_version,
        n_prompts=n_prompts,
        user_id=user_id,
    )
    _wake(rt)
    return job.id
