"""The iteration lifecycle: labeling -> training -> evaluating -> deployed | rejected -> next one.

`train_iteration` trains the labeling iteration end to end: it queues a training job for it, runs
it in a child process (DPO, then the held-out evaluation; retried if the child dies), gates the
candidate, deploys or rejects it, and with `loop.auto_continue` starts the next iteration's
generation. A step that fails leaves the iteration `failed` with its error; the
deployed policy changes only in the deploy's own transaction, so it is always a complete one.

`recover_iterations` is what a restarted scheduler runs: dead jobs are failed and re-queued (see
`storage.jobs.recover_stale`) for the scheduler to run, an iteration whose candidate was
evaluated but never gated is gated now, and one whose job ran out of attempts is failed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from storage import crud, jobs, pairs
from storage import gold as gold_store
from storage.db import transaction
from storage.gold import GoldRule
from storage.models import Iteration, IterationState, Job, JobStatus, PolicyStatus
from storage.policies import finish_iteration, set_iteration_metrics
from storage.settings import Settings
from training import deploy as deploying
from training.dpo import training_preferences
from training.runner import run_with_retries

log = logging.getLogger("prefloop.iteration")

TRAIN = "train"


class IterationError(RuntimeError):
    pass


@dataclass
class IterationReport:
    iteration_k: int
    decision: str  # deployed | rejected | failed
    candidate_version: int | None = None
    deployed_version: int | None = None
    job_id: int | None = None
    attempts: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    next_iteration_k: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def human_labels(*, engine, iteration_id: int, gold: GoldRule | None = None) -> int:
    """The iteration's human labels, but those of the annotators `gold` flags."""
    with transaction(engine, readonly=True) as session:
        flagged = gold_store.flagged_annotators(session=session, rule=gold)
        counts = crud.label_counts(session=session, iteration_id=iteration_id, leave_out=flagged)
        return counts.get("human", 0)


def human_capacity(*, engine, iteration_id: int) -> int:
    """How many human labels the iteration's pairs can take (their overlap; proxy-only and
    discarded pairs take none)."""
    with transaction(engine, readonly=True) as session:
        return pairs.human_capacity(session=session, iteration_id=iteration_id)


def quota_reached(*, engine, gold: GoldRule | None = None) -> Iteration | None:
    """The labeling iteration once its human labels reach its quota (or all its pairs have
    their human labels, when they can take fewer than the quota), else None. With `gold`
    (`GoldRule.filtering`), the flagged annotators' labels do not count, and the pairs they
    labeled go back to the queue first (`storage.gold.requeue_flagged`)."""
    with transaction(engine, readonly=True) as session:
        iteration = crud.current_iteration(session=session)
    if iteration is None or iteration.state != IterationState.labeling:
        return None
    if gold is not None:
        with transaction(engine) as session:
            gold_store.requeue_flagged(session=session, rule=gold)
    target = min(iteration.human_quota, human_capacity(engine=engine, iteration_id=iteration.id))
    if human_labels(engine=engine, iteration_id=iteration.id, gold=gold) < max(1, target):
        return None
    return iteration


def queue_training(
    *,
    engine,
    settings: Settings,
    user_id: int | None = None,
    refit_proxy: bool = True,
    evaluate: bool = True,
    require_data: bool = False,
) -> Job:
    """Move the labeling iteration to `training` and queue its training job (one transaction).
    The job refits the proxy first and evaluates its candidate after (each can be left out).

    Refuses (crud.Conflict) when no iteration is labeling or a training job is active, and, with
    `require_data` (a person's "train now"), when the round has no decided pair to train on yet:
    the iteration stays open for labels rather than failing. (The quota's trigger still fails an
    iteration whose labels decided nothing: waiting would not change that.)"""
    with transaction(engine) as session:
        iteration = crud.current_iteration(session=session)
        if iteration is None or iteration.state != IterationState.labeling:
            state = f"iteration {iteration.k} is {iteration.state}" if iteration else "none yet"
            raise crud.Conflict(f"no iteration is labeling ({state}): generate a round first")
        active = jobs.active_jobs(session=session, kind=TRAIN)
        if active:
            raise crud.Conflict(f"training job {active[0].id} is {active[0].status} already")
        deployed = crud.deployed_policy(session=session)
        if deployed is None:
            raise crud.Conflict("no deployed policy to start from")
        first = crud.list_policies(session=session)[0]
        scope = None if settings.loop.data_scope == "all" else [iteration.k]
        with_seed = iteration.k == 0  # seed preferences are iteration-0 data
        if require_data and not _has_preferences(session, settings, scope, with_seed):
            raise crud.Conflict(
                f"iteration {iteration.k} has no decided pair to train on yet: label some first"
            )
        crud.set_iteration_state(
            session=session, iteration_id=iteration.id, state=IterationState.training
        )
        job = jobs.create_job(
            session=session,
            kind=TRAIN,
            iteration_id=iteration.id,
            params={
                "iteration_id": iteration.id,
                "iteration_k": iteration.k,
                "init_version": first.version if settings.loop.start == "sft" else deployed.version,
                "ref_version": first.version if settings.loop.reference == "sft" else None,
                "iterations": scope,
                "with_seed": with_seed,
                "refit_proxy": refit_proxy,
                "evaluate": evaluate,
                # The settings in effect now (admins' run-time changes included), for the child.
                "settings": settings.model_dump(mode="json", exclude={"data_dir", "database_url"}),
                "requested_by": user_id,
            },
        )
        if user_id is not None:
            crud.record_audit(
                session=session,
                user_id=user_id,
                action="train",
                detail={"iteration": iteration.k, "job_id": job.id},
            )
        return job


def _has_preferences(session, settings: Settings, iterations, with_seed: bool) -> bool:
    """Whether the training job would find a pair to train on."""
    rows = training_preferences(
        session=session,
        iterations=iterations,
        with_seed=with_seed,
        settings=settings,
        batch_size=1,
    )
    return next(rows, None) is not None


def fail_iteration(*, engine, iteration_id: int, error: str) -> None:
    with transaction(engine) as session:
        iteration = crud.get_iteration(session=session, iteration_id=iteration_id)
        if iteration.state in crud.OPEN_STATES:
            crud.set_iteration_state(
                session=session, iteration_id=iteration_id, state=IterationState.failed, error=error
            )


def gate_iteration(
    *, engine, settings: Settings, iteration_id: int, candidate_version: int
) -> IterationReport:
    """Gate the evaluated candidate, deploy or reject it, and end the iteration."""
    with transaction(engine, readonly=True) as session:
        iteration = crud.get_iteration(session=session, iteration_id=iteration_id)
        candidate = crud.get_policy(session=session, version=candidate_version)
    evaluation = candidate.metrics.get("eval", {})
    result = deploying.gate(evaluation, settings.eval)
    if result.passed:
        deployed = deploying.deploy(
            engine=engine, version=candidate_version, reason=f"gate: iteration {iteration.k}"
        )
        decision = IterationState.deployed
        deployed_version = deployed.version
    else:
        deploying.reject(engine=engine, version=candidate_version, detail=result.as_dict())
        decision = IterationState.rejected
        deployed_version = evaluation.get("deployed_version")
    with transaction(engine) as session:
        finish_iteration(
            session=session,
            iteration_id=iteration_id,
            state=decision,
            policy_out_id=candidate.id,
            metrics={
                "candidate_version": candidate_version,
                "train": candidate.metrics.get("train", {}),
                "eval": evaluation,
                "gate": result.as_dict(),
            },
        )
    if result.passed:
        _after_deploy(engine, settings, candidate_version, evaluation.get("deployed_version"))
    return IterationReport(
        iteration_k=iteration.k,
        decision=decision.value,
        candidate_version=candidate_version,
        deployed_version=deployed_version,
        train=candidate.metrics.get("train", {}),
        eval=evaluation,
        gate=result.as_dict(),
    )


def _after_deploy(engine, settings: Settings, version: int, previous: int | None) -> None:
    """The human side of a deploy: blind evaluation pairs against the versions before it, and
    under `eval.gate = "human"` the deploy waits for their votes (training/human_eval.py)."""
    from training import human_eval

    if settings.eval.gate == "human" and previous is not None:
        human_eval.start_human_gate(engine=engine, version=version, opponent=previous)
    human_eval.queue_after_deploy(
        engine=engine, settings=settings, version=version, previous=previous
    )


def start_next_iteration(*, engine, settings: Settings) -> int | None:
    """Generate the next iteration's pairs from the deployed policy; returns its k."""
    from labeling.iteration import generate_iteration

    return generate_iteration(engine=engine, settings=settings)["iteration_k"]


def train_iteration(
    *,
    engine,
    settings: Settings,
    user_id: int | None = None,
    job_id: int | None = None,
    continue_loop: bool | None = None,
    on_start=None,
    require_data: bool = False,
) -> IterationReport:
    """Train the labeling iteration now: queue (unless `job_id` is given), train, evaluate,
    gate, deploy, and (`continue_loop`, default `loop.auto_continue`) generate the next
    iteration's pairs."""
    started = time.monotonic()
    if job_id is None:
        job_id = queue_training(
            engine=engine, settings=settings, user_id=user_id, require_data=require_data
        ).id
    with transaction(engine, readonly=True) as session:
        first = jobs.get_job(session=session, job_id=job_id)
        iteration = crud.get_iteration(session=session, iteration_id=first.iteration_id)
    try:
        job = run_with_retries(engine=engine, settings=settings, job_id=job_id, on_start=on_start)
        if job.status != JobStatus.succeeded:
            raise IterationError(job.error or f"training job {job.id} ended {job.status}")
        report = gate_iteration(
            engine=engine,
            settings=settings,
            iteration_id=iteration.id,
            candidate_version=job.result["candidate_version"],
        )
    except Exception as exc:
        error = str(exc) if isinstance(exc, IterationError) else f"{type(exc).__name__}: {exc}"
        log.error("iteration %s failed: %s", iteration.k, error)
        fail_iteration(engine=engine, iteration_id=iteration.id, error=error)
        return IterationReport(
            iteration_k=iteration.k,
            decision=IterationState.failed.value,
            job_id=job_id,
            error=error,
            seconds=round(time.monotonic() - started, 2),
        )
    report.job_id = job.id
    report.attempts = job.attempts + 1
    with transaction(engine) as session:
        set_iteration_metrics(
            session=session,
            iteration_id=iteration.id,
            metrics={"job_id": job.id, "round_seconds": round(time.monotonic() - started, 2)},
        )
    if settings.loop.auto_continue if continue_loop is None else continue_loop:
        report.next_iteration_k = start_next_iteration(engine=engine, settings=settings)
    report.seconds = round(time.monotonic() - started, 2)
    return report


def recover_iterations(
    *, engine, settings: Settings, check_pid: bool = True
) -> list[IterationReport]:
    """After a crash or restart: fail dead jobs and queue their retries (the scheduler runs
    them); gate an iteration whose candidate was evaluated but never gated; fail one whose
    training job gave up. Returns the reports of the iterations gated here."""
    with transaction(engine) as session:
        recovered = jobs.recover_stale(
            session=session,
            stale_after=timedelta(seconds=settings.loop.stale_after_seconds),
            max_attempts=settings.loop.max_attempts,
            check_pid=check_pid,
        )
    for dead, retry in recovered:
        log.warning(
            "job %s (%s) died: %s; %s",
            dead.id,
            dead.kind,
            dead.error,
            f"retrying as job {retry.id}" if retry else "out of attempts",
        )
    with transaction(engine, readonly=True) as session:
        active = jobs.active_jobs(session=session, kind=TRAIN)
        iteration = crud.current_iteration(session=session)
        last = jobs.list_jobs(session=session, kind=TRAIN, limit=1)
    if active or iteration is None:
        return []
    if iteration.state not in (IterationState.training, IterationState.evaluating):
        return []
    job = last[0] if last and last[0].iteration_id == iteration.id else None
    candidate = job.result.get("candidate_version") if job else None
    if job is not None and job.status == JobStatus.succeeded and candidate is not None:
        with transaction(engine, readonly=True) as session:
            policy = crud.get_policy(session=session, version=candidate)
        if "eval" in policy.metrics and policy.status == PolicyStatus.candidate:
            report = gate_iteration(
                engine=engine,
                settings=settings,
                iteration_id=iteration.id,
                candidate_version=candidate,
            )
            return [report]
    error = job.error if job and job.error else "training was interrupted"
    fail_iteration(engine=engine, iteration_id=iteration.id, error=error)
    return []


GENERATE = "generate"


def queue_generation(*, engine, user_id: int | None = None) -> Job:
    """Queue the next iteration's generation (an admin's "Generate next round" button).

    Refuses (crud.Conflict) while an iteration is open or a generation is queued or running."""
    with transaction(engine) as session:
        iteration = crud.current_iteration(session=session)
        if iteration is not None and iteration.state in crud.OPEN_STATES:
            raise crud.Conflict(f"iteration {iteration.k} is still {iteration.state}")
        active = jobs.active_jobs(session=session, kind=GENERATE)
        if active:
            raise crud.Conflict(f"generation job {active[0].id} is {active[0].status} already")
        job = jobs.create_job(session=session, kind=GENERATE, params={"requested_by": user_id})
        if user_id is not None:
            crud.record_audit(
                session=session, user_id=user_id, action="generate", detail={"job_id": job.id}
            )
        return job


def run_generation(*, engine, settings: Settings, job_id: int) -> Job:
    """Run a queued generation job in this process (generation has its own batching)."""
    import os

    with transaction(engine) as session:
        jobs.start_job(session=session, job_id=job_id, pid=os.getpid())
    try:
        k = start_next_iteration(engine=engine, settings=settings)
    except Exception as exc:
        log.exception("generation job %s failed", job_id)
        with transaction(engine) as session:
            return jobs.fail_job(
                session=session, job_id=job_id, error=f"{type(exc).__name__}: {exc}"
            )
    with transaction(engine) as session:
        return jobs.finish_job(session=session, job_id=job_id, result={"iteration_k": k})
