"""Training on the command line: one round now, deploy, rollback, and the unattended loop.
Registered in app/cli.py."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Annotated, Any

import typer

from app.cli_common import BothBadBelow, Careless, DataDir, fail, parse_careless, runtime
from app.cli_worker import stop_generation_worker
from storage import crud, jobs
from storage.db import transaction
from storage.models import Iteration, IterationState, JobStatus
from storage.runtime import Runtime
from storage.scheduler_lock import SchedulerRunning
from storage.settings import DEFAULT_DATA_DIR

FINISHED = (IterationState.deployed, IterationState.rejected, IterationState.failed)


def train(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    next_round: Annotated[
        bool | None,
        typer.Option(
            "--next-round/--no-next-round",
            help="Generate the next round afterwards (default: loop.auto_continue).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The round's report as JSON.")] = False,
) -> None:
    """Run one training round now on the labeling iteration: DPO, evaluation, gate, deploy."""
    from training.iteration import train_iteration

    rt = runtime(data_dir)
    try:
        report = train_iteration(
            engine=rt.engine,
            settings=rt.effective_settings(),
            continue_loop=next_round,
            require_data=True,
        )
    except crud.Conflict as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), default=str))
    else:
        typer.echo(_describe(report.as_dict()))
    if report.decision == IterationState.failed:
        raise typer.Exit(1)


def _describe(report: dict[str, Any]) -> str:
    if report["decision"] == "failed":
        return f"iteration {report['iteration_k']}: failed: {report['error']}"
    gate = report["gate"]
    rate = "n/a" if gate.get("win_rate") is None else f"{gate['win_rate']:.3f}"
    train = report["train"]
    return (
        f"iteration {report['iteration_k']}: candidate v{report['candidate_version']} "
        f"{report['decision']} ({gate.get('judge')} win-rate {rate} vs v{gate.get('opponent')}, "
        f"threshold {gate.get('threshold')}); DPO on {train.get('n_pairs')} pairs, loss "
        f"{_figure(train.get('final_loss'))}, margin {_figure(train.get('reward_margin'))}; "
        f"{report['seconds']:.0f}s"
    )


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def deploy(
    version: Annotated[int, typer.Argument(help="The policy version to deploy.")],
    force: Annotated[bool, typer.Option(help="Deploy a version the gate rejected.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Deploy a policy version (atomic; audited). Generation uses it from its next round."""
    from training.deploy import DeployError
    from training.deploy import deploy as deploy_version

    rt = runtime(data_dir)
    try:
        policy = deploy_version(engine=rt.engine, version=version, force=force)
    except (DeployError, crud.NotFound) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"deployed policy v{policy.version} ({policy.path})")


def rollback(
    to: Annotated[
        int | None, typer.Option("--to", help="Version to go back to (default: the one before).")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Deploy an earlier policy version again."""
    from training.deploy import DeployError
    from training.deploy import rollback as roll_back

    rt = runtime(data_dir)
    try:
        policy = roll_back(engine=rt.engine, to_version=to)
    except (DeployError, crud.NotFound) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"rolled back: policy v{policy.version} is deployed ({policy.path})")


def loop(
    iterations: Annotated[int, typer.Option(min=1, help="Full iterations to run.")] = 3,
    simulate: Annotated[
        bool, typer.Option(help="Label with simulated annotators (required for now).")
    ] = False,
    judge: Annotated[
        str | None,
        typer.Option(
            help="module:callable the simulated annotators and the evaluation use (default: "
            "[eval] judge, which a demo sets, else the support demo's)."
        ),
    ] = None,
    annotators: Annotated[int, typer.Option(min=1, help="Simulated annotators.")] = 3,
    noise: Annotated[
        float, typer.Option(min=0.0, help="Annotators' noise (Bradley-Terry temperature).")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the simulated annotators.")] = 0,
    both_bad_below: BothBadBelow = None,
    careless: Careless = None,
    timeout: Annotated[float, typer.Option(help="Give up on an iteration after seconds.")] = 1800,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per iteration.")] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Run K iterations unattended through the scheduler: label (simulated), train, evaluate,
    gate, deploy, generate the next round. Prints each iteration's outcome."""
    from labeling.judges import DEFAULT_JUDGE

    if not simulate:
        raise fail("only --simulate is supported: real annotators label through `prefloop serve`")
    shares = parse_careless(careless)
    rt = runtime(data_dir, loop={"auto_continue": True})
    # the data directory's judge (a demo's, or [eval] judge) unless one is given
    spec = judge or rt.settings.eval.judge or DEFAULT_JUDGE
    if spec != rt.settings.eval.judge:
        rt = runtime(data_dir, eval={"judge": spec}, loop={"auto_continue": True})
    logging.basicConfig(level=logging.WARNING)
    try:
        for line in run_loop(
            rt,
            iterations=iterations,
            judge=spec,
            annotators=annotators,
            noise=noise,
            seed=seed,
            both_bad_below=both_bad_below,
            careless=shares,
            timeout=timeout,
        ):
            typer.echo(json.dumps(line, default=str) if as_json else _describe_loop(line))
            sys.stdout.flush()
            if line["decision"] == IterationState.failed:
                raise typer.Exit(1)  # the line gives the error; no iteration follows a failed one
    except SchedulerRunning as exc:
        raise fail(f"{exc}; the loop drives a scheduler of its own: stop that one first") from None
    except (crud.Conflict, LoopError) as exc:
        raise fail(str(exc)) from None


class LoopError(RuntimeError):
    pass


def _wait(
    rt: Runtime,
    predicate,
    timeout: float,
    what: str,
    k: int | None = None,
    job_id: int | None = None,
) -> Iteration:
    """Poll until `predicate` holds for iteration `k` (default: the current one). A failed
    `job_id` (the job meant to get there) stops the wait with its error."""
    deadline = time.monotonic() + timeout
    while True:
        with transaction(rt.engine, readonly=True) as session:
            if k is None:
                iteration = crud.current_iteration(session=session)
            else:
                try:
                    iteration = crud.get_iteration_by_k(session=session, k=k)
                except crud.NotFound:
                    iteration = None  # not generated yet
            job = None if job_id is None else jobs.get_job(session=session, job_id=job_id)
        if iteration is not None and predicate(iteration):
            return iteration
        if job is not None and job.status == JobStatus.failed:
            raise LoopError(f"{job.kind} job {job.id} failed: {job.error}")
        if time.monotonic() > deadline:
            state = f"iteration {iteration.k} is {iteration.state}" if iteration else "none"
            raise LoopError(f"timed out after {timeout:.0f}s waiting for {what} ({state})")
        time.sleep(0.25)


def run_loop(
    rt: Runtime,
    *,
    iterations: int,
    judge: str,
    annotators: int = 3,
    noise: float = 0.5,
    seed: int = 0,
    both_bad_below: float | None = None,
    careless: dict[int, float] | None = None,
    timeout: float = 1800,
):
    """Yield one report per iteration: the loop through the scheduler, labels simulated
    (`careless`: see `labeling.simulate`). A failed iteration's report is the last: nothing
    generates a round after it."""
    from app.scheduler import request_generation, start_scheduler
    from labeling.judges import load_judge
    from training.evaluate import prepare_baselines

    judge_fn = load_judge(judge)
    handle = start_scheduler(rt)
    try:
        with transaction(rt.engine, readonly=True) as session:
            current = crud.current_iteration(session=session)
        # Iterations are waited for by their k: the current one may be an earlier run's failure.
        if current is None or current.state in FINISHED:
            k = 0 if current is None else current.k + 1
            generation = request_generation(rt, user_id=None)
        else:
            k, generation = current.k, None
        for _ in range(iterations):
            labeling = _wait(
                rt,
                lambda it: it.state in (IterationState.labeling, IterationState.failed),
                timeout,
                "the next round's pairs",
                k=k,
                job_id=generation,
            )
            generation = None  # each later iteration is generated by the training of the one before
            if labeling.state == IterationState.failed:
                raise LoopError(f"iteration {labeling.k} failed: {labeling.error}")
            # What the scheduler draws while people label (eval.prepare_while_labeling), done
            # before the simulated labels, which take no time: the turnaround stays comparable.
            prepared = time.monotonic()
            settings = rt.effective_settings()
            if settings.eval.prepare_while_labeling:
                prepare_baselines(engine=rt.engine, settings=settings)
            prepared = time.monotonic() - prepared
            _simulate_until_quota(
                rt,
                labeling,
                judge_fn,
                annotators,
                noise,
                seed + labeling.k,
                both_bad_below,
                careless,
            )
            quota_at = time.monotonic()
            handle.wake()
            done = _wait(rt, lambda it: it.state in FINISHED, timeout, "training", k=labeling.k)
            if done.state == IterationState.failed:
                yield _loop_report(rt, done, time.monotonic() - quota_at, None, prepared)
                return
            next_round = _wait(
                rt,
                lambda it: it.state in (IterationState.labeling, IterationState.failed),
                timeout,
                "the next round's pairs",
                k=labeling.k + 1,
            )
            k = next_round.k
            turnaround = time.monotonic() - quota_at
            yield _loop_report(rt, done, turnaround, next_round, prepared)
    finally:
        handle.shutdown(wait=True)
        stop_generation_worker(rt)


def _simulate_until_quota(
    rt: Runtime,
    labeling: Iteration,
    judge,
    annotators: int,
    noise: float,
    seed: int,
    both_bad,
    careless: dict[int, float] | None = None,
) -> None:
    """Simulated annotators label until the iteration has its quota of human labels: their votes
    on evaluation pairs (mixed in at eval.human_share) and their labels on gold pairs (at
    labeling.gold_rate) count toward no quota, so a round may need more labels than the quota."""
    from labeling import simulate
    from storage.gold import GoldRule
    from training.iteration import human_labels, quota_reached

    gold = GoldRule.filtering(rt.effective_settings().labeling)
    for turn in range(1000):
        missing = labeling.human_quota - human_labels(
            engine=rt.engine, iteration_id=labeling.id, gold=gold
        )
        done = simulate.simulate_labels(
            engine=rt.engine,
            settings=rt.effective_settings(),
            annotators=annotators,
            noise=noise,
            judge=judge,
            max_labels=max(1, missing),
            seed=seed + 7919 * turn,
            both_bad_below=both_bad,
            careless=careless,
        )
        if done == 0 or quota_reached(engine=rt.engine, gold=gold) is not None:
            return


def _loop_report(
    rt: Runtime,
    iteration: Iteration,
    turnaround: float,
    next_round: Iteration | None,
    prepared: float = 0.0,
) -> dict:
    with transaction(rt.engine, readonly=True) as session:
        labels = crud.label_counts(session=session, iteration_id=iteration.id)
    metrics = iteration.metrics
    evaluation = metrics.get("eval", {})
    versus = evaluation.get("vs", {})
    first = "v0"

    def gold(key):
        return versus.get(key, {}).get("gold", {}).get("win_rate")

    previous = evaluation.get("deployed_version")
    return {
        "iteration": iteration.k,
        "decision": iteration.state.value,
        "error": iteration.error,
        "human_labels": labels.get("human", 0),
        "proxy_labels": labels.get("proxy", 0),
        "candidate_version": metrics.get("candidate_version"),
        "dpo": {
            k: metrics.get("train", {}).get(k)
            for k in ("n_pairs", "steps", "final_loss", "reward_margin", "reward_accuracy")
        },
        "gold_win_rate_vs_pi0": gold(first),
        "gold_win_rate_vs_previous": gold(f"v{previous}") if previous is not None else None,
        "previous_version": previous,
        "proxy_win_rate_vs_previous": versus.get(f"v{previous}", {})
        .get("proxy", {})
        .get("win_rate"),
        "gold_mean": evaluation.get("mean", {}).get("gold"),
        # DPO's implicit reward against pi_0 on held-out pairs (training.implicit_reward)
        "heldout_reward": evaluation.get("implicit_reward"),
        "turnaround_seconds": round(turnaround, 1),
        # the evaluation's baselines drawn while the round was open, before its labels
        "prepared_seconds": round(prepared, 1),
        "next_iteration": None if next_round is None else next_round.k,
    }


def _describe_loop(r: dict) -> str:
    fmt = _figure
    if r["decision"] == "failed":
        return f"iteration {r['iteration']}: failed: {r['error']}"
    d = r["dpo"]
    heldout = r.get("heldout_reward") or {}
    seconds = r["prepared_seconds"]
    prepared = f" (evaluation baselines drawn before: {seconds:.0f}s)" if seconds >= 1 else ""
    return (
        f"iteration {r['iteration']}: labels human {r['human_labels']} proxy "
        f"{r['proxy_labels']} | DPO {d['n_pairs']} pairs, loss {fmt(d['final_loss'])}, "
        f"margin {fmt(d['reward_margin'])}, acc {fmt(d['reward_accuracy'])}; held-out margin "
        f"{fmt(heldout.get('margin'))}, acc {fmt(heldout.get('accuracy'))} | gold win-rate "
        f"vs pi_0 {fmt(r['gold_win_rate_vs_pi0'])}, vs v{r['previous_version']} "
        f"{fmt(r['gold_win_rate_vs_previous'])} | v{r['candidate_version']} {r['decision']} | "
        f"turnaround {r['turnaround_seconds']}s{prepared}"
    )
