"""Human evaluation of policy versions: blind evaluation pairs, the leaderboard, the human gate.

- `queue_eval_pairs`: two versions' replies to held-out prompts, queued as evaluation pairs
  (storage/evaluation.py) that annotators vote on through the ordinary queue, blind: nothing on
  the page names a version, the pair's a/b sides are drawn at random and the shown order anew
  per annotator. The replies are the automatic evaluation's (`training.evaluate.cached_samples`,
  same prompts, seed and sampling), so a version it sampled is not sampled again. The prompts
  are a seeded shuffle of the evaluation's prompts, the same order every time: asking for more
  prompts later adds the next ones, and asking twice adds nothing. A prompt whose two replies
  are the same text is skipped (nothing to vote on).
- After each deploy by the gate (`queue_after_deploy`), the new version against the one it
  replaced and against π_0, on `eval.human_prompts` prompts.
- `human_leaderboard`: every vote through the Bradley–Terry fit of training/ratings.py.
- The human gate (`eval.gate = "human"`): the automatic gate deploys as under "auto" and marks
  the deploy pending (`Policy.metrics["human_gate"]`); `check_human_gate`, on each scheduler
  tick, decides once the new version and the one it replaced have `eval.human_min_votes` votes
  between them (or every pair between them has its vote): the deploy stays when the lower bound
  of the 95% bootstrap interval of the new version's win-rate reaches `eval.human_threshold`,
  else the previous version is deployed again and the new one marked rejected. Each decision is
  audited.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from typing import Any

from storage import crud, evaluation, jobs
from storage.db import transaction
from storage.models import ErrorKind, Job, Policy, PolicyStatus
from storage.policies import set_policy_metrics, set_policy_status
from storage.settings import Settings
from training import deploy as deploying
from training.ratings import Leaderboard, leaderboard

log = logging.getLogger("prefloop.human_eval")

EVAL_PAIRS = "eval_pairs"  # the job kind of an admin's request from the admin view
HUMAN_GATE = "human_gate"  # the key in Policy.metrics
PENDING, CONFIRMED, ROLLED_BACK, SUPERSEDED = "pending", "confirmed", "rolled_back", "superseded"


def queue_eval_pairs(
    *,
    engine,
    settings: Settings,
    a_version: int,
    b_version: int,
    n_prompts: int | None = None,
    user_id: int | None = None,
    reason: str = "admin",
) -> dict[str, Any]:
    """Queue blind evaluation pairs of `a_version` against `b_version` on `n_prompts` held-out
    prompts (default `eval.human_prompts`), `eval.samples_per_prompt` pairs each; audited.
    Returns {a, b, prompts, added, present, identical}."""
    from training.evaluate import cached_samples, held_out_prompts

    n = settings.eval.human_prompts if n_prompts is None else n_prompts
    if n < 1:
        raise ValueError(f"prompts: at least 1 (got {n})")
    if a_version == b_version:
        raise ValueError(f"a, b: two different versions, please (got v{a_version} twice)")
    with transaction(engine, readonly=True) as session:
        a = crud.get_policy(session=session, version=a_version)
        b = crud.get_policy(session=session, version=b_version)
    rows = held_out_prompts(engine=engine, settings=settings, n=max(n, settings.eval.n_prompts))
    if not rows:
        raise RuntimeError("no held-out prompts (split 'eval') to evaluate on")
    ev, seed = settings.eval, settings.eval.seed
    texts = [text for _, text in rows]
    replies_a = cached_samples(settings=settings, policy=a, prompts=texts, seed=seed)
    replies_b = cached_samples(settings=settings, policy=b, prompts=texts, seed=seed)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    sampling = {
        "source": "eval",
        "temperature": ev.temperature,
        "seed": seed,
        "max_new_tokens": ev.max_new_tokens or settings.generation.max_new_tokens,
    }
    with transaction(engine) as session:
        present = evaluation.queued_slots(session=session, a_version=a.version, b_version=b.version)
        slots, identical, already = [], 0, 0
        for index in order[:n]:
            prompt_id = rows[index][0]
            for slot, (text_a, text_b) in enumerate(
                zip(replies_a[index], replies_b[index], strict=True)
            ):
                if (prompt_id, slot) in present:
                    already += 1
                elif text_a == text_b:
                    identical += 1
                else:
                    slots.append(evaluation.EvalSlot(prompt_id, slot, text_a, text_b))
        rng = random.Random(f"{seed}:{a.version}:{b.version}:{len(present)}")
        added = evaluation.add_eval_pairs(
            session=session, a=a, b=b, slots=slots, sampling=sampling, rng=rng
        )
        report = {
            "a": a.version,
            "b": b.version,
            "prompts": min(n, len(rows)),
            "added": added,
            "present": already,
            "identical": identical,
        }
        crud.record_audit(
            session=session,
            user_id=user_id,
            action="eval.pairs",
            detail={**report, "reason": reason},
        )
    return report


def queue_after_deploy(
    *, engine, settings: Settings, version: int, previous: int | None
) -> list[dict[str, Any]]:
    """After the gate deployed `version`: evaluation pairs against `previous` (the version it
    replaced) and π_0, on at most `eval.n_prompts` prompts (the automatic evaluation's, whose
    replies are cached). A failure is logged, never raised: the deploy stands."""
    n = min(settings.eval.human_prompts, settings.eval.n_prompts)
    if n < 1:
        return []
    with transaction(engine, readonly=True) as session:
        first = crud.list_policies(session=session)[0].version
    reports = []
    for opponent in dict.fromkeys([previous, first]):
        if opponent is None or opponent == version:
            continue
        try:
            reports.append(
                queue_eval_pairs(
                    engine=engine,
                    settings=settings,
                    a_version=version,
                    b_version=opponent,
                    n_prompts=n,
                    reason="deploy",
                )
            )
        except Exception:
            log.exception("evaluation pairs of v%s against v%s not queued", version, opponent)
    return reports


def request_eval_pairs(
    *, engine, a_version: int, b_version: int, n_prompts: int | None, user_id: int
) -> Job:
    """An admin's request from the admin view, as a job the scheduler runs (sampling a version
    the evaluation never sampled loads the model: not in a request); audited."""
    if a_version == b_version:
        raise ValueError(f"a, b: two different versions, please (got v{a_version} twice)")
    if n_prompts is not None and n_prompts < 1:
        raise ValueError(f"prompts: at least 1 (got {n_prompts})")
    with transaction(engine) as session:
        for version in (a_version, b_version):
            crud.get_policy(session=session, version=version)
        params = {"a": a_version, "b": b_version, "prompts": n_prompts, "requested_by": user_id}
        job = jobs.create_job(session=session, kind=EVAL_PAIRS, params=params)
        crud.record_audit(
            session=session,
            user_id=user_id,
            action="eval.request",
            detail={**params, "job_id": job.id},
        )
        return job


def run_eval_pairs_job(*, engine, settings: Settings, job_id: int) -> Job:
    """Run a queued EVAL_PAIRS job in this process."""
    import os

    with transaction(engine) as session:
        job = jobs.start_job(session=session, job_id=job_id, pid=os.getpid())
    params = job.params
    try:
        report = queue_eval_pairs(
            engine=engine,
            settings=settings,
            a_version=params["a"],
            b_version=params["b"],
            n_prompts=params.get("prompts"),
            user_id=params.get("requested_by"),
        )
    except Exception as exc:
        log.exception("evaluation pairs job %s failed", job_id)
        with transaction(engine) as session:
            return jobs.fail_job(
                session=session,
                job_id=job_id,
                error=f"{type(exc).__name__}: {exc}",
                kind=ErrorKind.permanent,
            )
    with transaction(engine) as session:
        return jobs.finish_job(session=session, job_id=job_id, result=report)


def human_leaderboard(
    *, engine, settings: Settings, versions: set[int] | None = None
) -> Leaderboard:
    """The leaderboard of every vote (or of the votes between `versions` only), anchored at the
    first version (π_0) when it has votes."""
    with transaction(engine, readonly=True) as session:
        counts = evaluation.vote_counts(session=session)
        policies = crud.list_policies(session=session)
    rows = [
        (c.version_a, c.version_b, str(c.choice), c.n)
        for c in counts
        if versions is None or {c.version_a, c.version_b} <= versions
    ]
    board = leaderboard(
        rows,
        resamples=settings.eval.bootstrap_samples,
        seed=settings.eval.seed,
        anchor=policies[0].version if policies else None,
    )
    status = {p.version: str(p.status) for p in policies}
    return Leaderboard(
        ratings=board.ratings,
        head_to_head=board.head_to_head,
        anchor=board.anchor,
        votes=board.votes,
        resamples=board.resamples,
        seed=board.seed,
        meta={"status": {r.version: status.get(r.version) for r in board.ratings}},
    )


# the human gate


def start_human_gate(*, engine, version: int, opponent: int) -> None:
    """Mark `version`'s deploy as waiting for the human votes against `opponent` (the version it
    replaced). An opponent still waiting itself is superseded: its successor is now measured
    against it."""
    with transaction(engine) as session:
        set_policy_metrics(
            session=session,
            version=version,
            metrics={HUMAN_GATE: {"status": PENDING, "opponent": opponent}},
        )
        other = crud.get_policy(session=session, version=opponent)
        if other.metrics.get(HUMAN_GATE, {}).get("status") == PENDING:
            set_policy_metrics(
                session=session,
                version=opponent,
                metrics={HUMAN_GATE: {**other.metrics[HUMAN_GATE], "status": SUPERSEDED}},
            )


@dataclass(frozen=True)
class HumanGateDecision:
    decision: str  # pending | confirmed | rolled_back
    version: int
    opponent: int
    votes: int
    needed: int
    win_rate: float | None
    lower: float | None
    upper: float | None
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def human_gate_decision(
    board: Leaderboard, *, version: int, opponent: int, open_votes: int, settings: Settings
) -> HumanGateDecision:
    """The human gate's rule: pending until `eval.human_min_votes` votes between the two (or
    all there can be: those cast plus `open_votes`, at least one), then confirmed when the lower
    bound of `version`'s win-rate over `opponent` reaches `eval.human_threshold`, else rolled
    back."""
    h = board.head_to_head_of(version, opponent)
    votes = 0 if h is None else h.votes
    needed = max(1, min(settings.eval.human_min_votes, votes + open_votes))
    threshold = settings.eval.human_threshold
    if h is None or votes < needed:
        decision = PENDING
    else:
        decision = CONFIRMED if h.lower >= threshold else ROLLED_BACK
    return HumanGateDecision(
        decision=decision,
        version=version,
        opponent=opponent,
        votes=votes,
        needed=needed,
        win_rate=None if h is None else h.win_rate,
        lower=None if h is None else h.lower,
        upper=None if h is None else h.upper,
        threshold=threshold,
    )


def check_human_gate(*, engine, settings: Settings) -> HumanGateDecision | None:
    """The scheduler's tick: decide the deployed version's pending human gate once its votes are
    in; confirm it or roll back to the version it replaced (audited). None when nothing waits, or
    when `eval.gate` is no longer "human" (an admin turned it off: a waiting deploy stays)."""
    if settings.eval.gate != "human":
        return None
    with transaction(engine, readonly=True) as session:
        deployed = crud.deployed_policy(session=session)
    state = (deployed.metrics.get(HUMAN_GATE) or {}) if deployed else {}
    if state.get("status") != PENDING:
        return None
    opponent = int(state["opponent"])
    with transaction(engine, readonly=True) as session:
        open_votes = evaluation.open_slots(
            session=session, a_version=deployed.version, b_version=opponent
        )
    board = human_leaderboard(
        engine=engine, settings=settings, versions={deployed.version, opponent}
    )
    result = human_gate_decision(
        board, version=deployed.version, opponent=opponent, open_votes=open_votes, settings=settings
    )
    if result.decision == PENDING:
        return result
    if result.decision == ROLLED_BACK:
        try:
            deploying.rollback(engine=engine, to_version=opponent)
        except (deploying.DeployError, crud.NotFound) as exc:
            log.error("human gate: v%s cannot be rolled back: %s", deployed.version, exc)
            _record(engine, deployed, result, error=str(exc))
            return result
    _record(engine, deployed, result)
    log.info(
        "human gate: v%s %s (win-rate %s, lower bound %s over %s votes against v%s)",
        deployed.version,
        result.decision,
        result.win_rate,
        result.lower,
        result.votes,
        opponent,
    )
    return result


def _record(engine, policy: Policy, result: HumanGateDecision, error: str | None = None) -> None:
    detail = {**result.as_dict(), **({"error": error} if error else {})}
    status = "rollback_failed" if error else result.decision
    with transaction(engine) as session:
        set_policy_metrics(
            session=session,
            version=policy.version,
            metrics={
                HUMAN_GATE: {**policy.metrics.get(HUMAN_GATE, {}), **detail, "status": status}
            },
        )
        if status == ROLLED_BACK:
            set_policy_status(session=session, version=policy.version, status=PolicyStatus.rejected)
            opponent = crud.get_policy(session=session, version=result.opponent)
            if opponent.metrics.get(HUMAN_GATE, {}).get("status") == SUPERSEDED:
                # it is deployed again: its own votes decide it again
                set_policy_metrics(
                    session=session,
                    version=result.opponent,
                    metrics={HUMAN_GATE: {**opponent.metrics[HUMAN_GATE], "status": PENDING}},
                )
        action = {CONFIRMED: "policy.human_confirm", ROLLED_BACK: "policy.human_rollback"}
        crud.record_audit(
            session=session,
            user_id=None,
            action=action[result.decision] if not error else "policy.human_rollback_failed",
            detail=detail,
        )
