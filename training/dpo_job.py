"""An iteration's training job in a child process: proxy refit, DPO, held-out evaluation.

    python -m training.dpo_job --data-dir D --job-id N

The trainer itself is `training.dpo` (TRL's `DPOTrainer`); this module is the job around it.

The job's params say what to train (written by `training.iteration.queue_training`):
`init_version` (the deployed policy pi_k, warm start), `ref_version` (pi_0 by default; None: the
init policy itself), `iterations` (the k whose preferences count; None: all), `with_seed` (with
`iterations`, the seed pairs too), `iteration_id`, and `settings` (the settings in effect when
the job was queued, admins' run-time changes included).
Before training, the same process refits the proxy's next version; after it, it evaluates the
candidate on the held-out prompts (`training.evaluate`), so the heavy imports are paid once per
iteration. With `generation.backend = "vllm"` the generation worker is asked to release its memory
before training (`labeling.vllm_worker`); the evaluation's first request takes it back.

The candidate checkpoint is written to a temporary directory beside `<data_dir>/policies` and
renamed into place, then registered as a `candidate` Policy row: a reader never sees half a
checkpoint, and a killed child leaves at most a temporary directory behind. Progress, loss, reward
margins and accuracy go on the job row; the log (stdout and stderr, via the runner) goes to
`<data_dir>/logs/job-N.log`.

Under `accelerate launch` every process runs this module and trains its share of the data; only
the main process (rank 0) writes: the job row (its start, progress, result and failure), the
proxy refit, the checkpoint's install and the evaluation. The others train and exit. Every
process dies with the launcher (Linux): a launcher stopped by a signal stops its workers, but one
killed outright (SIGKILL, the OOM killer) would leave them training, holding their GPUs and
writing into the job's directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from storage import crud, jobs
from storage.db import make_engine, transaction
from storage.models import IterationState, JobStatus, Policy, PolicyStatus
from storage.settings import from_snapshot, load_settings
from training.dpo import load_preferences, preference_records, train
from training.runner import error_kind

log = logging.getLogger("prefloop.dpo")

CHECKPOINT_FILE = "prefloop_policy.json"  # the config that produced a checkpoint, beside it


def main_process() -> bool:
    """Rank 0 of an `accelerate launch` (torchrun sets RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def die_with_launcher() -> None:
    """Have the kernel SIGKILL this process when its parent, `accelerate launch`, ends."""
    if sys.platform != "linux" or not os.environ.get("PREFLOOP_DIE_WITH_LAUNCHER"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher was gone already
        os._exit(1)


def _progress_callback(engine, job_id: int, min_interval: float = 2.0):
    """A TrainerCallback that puts progress and the latest TRL metrics on the job row."""
    from transformers import TrainerCallback

    class JobProgress(TrainerCallback):
        def __init__(self) -> None:
            self.last_write = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs or not state.is_world_process_zero:
                return
            now = time.monotonic()
            if now - self.last_write < min_interval and state.global_step < state.max_steps:
                return
            self.last_write = now
            metrics = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "loss": logs.get("loss"),
                "reward_margin": logs.get("rewards/margins"),
                "reward_accuracy": logs.get("rewards/accuracies"),
            }
            with transaction(engine) as session:
                jobs.heartbeat(
                    session=session,
                    job_id=job_id,
                    progress=0.9 * state.global_step / max(1, state.max_steps),
                    result={"phase": "training", "latest": metrics},
                )

    return JobProgress()


def job_settings(params: dict[str, Any], data_dir: Path, database_url: str | None = None):
    """The settings the job was queued with (`params["settings"]`), else the data directory's."""
    if "settings" not in params:
        return load_settings(data_dir, database_url=database_url)
    values = {**params["settings"], "data_dir": data_dir, "database_url": database_url}
    settings, dropped = from_snapshot(values)
    if dropped:
        log.warning("the job's settings name what this prefloop no longer has: %s", dropped)
    return settings


def checkpoint_dir(data_dir: Path, version: int) -> Path:
    return data_dir / "policies" / f"v{version}"


def install_checkpoint(tmp: Path, target: Path) -> None:
    """Rename a complete checkpoint into place. A leftover at `target` (a crashed job that
    renamed but never registered its policy) is moved aside first."""
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
        os.replace(target, aside / "old")
        shutil.rmtree(aside, ignore_errors=True)
    os.replace(tmp, target)


def run_job(*, engine, data_dir: Path, job_id: int) -> Policy | None:
    """Train the candidate of job `job_id` and register it (the main process; the others train
    their share and return None)."""
    main_rank = main_process()
    with transaction(engine) as session:
        job = jobs.get_job(session=session, job_id=job_id)
        params = dict(job.params)
        init = crud.get_policy(session=session, version=params["init_version"])
        ref = None
        if params.get("ref_version") is not None:
            ref = crud.get_policy(session=session, version=params["ref_version"])
        if main_rank:
            jobs.heartbeat(session=session, job_id=job_id, progress=0.0, result={"phase": "data"})
    settings = job_settings(params, data_dir)
    dpo = settings.dpo
    if main_rank and settings.generation.backend == "vllm":
        release_generation_worker(data_dir)

    from accelerate import PartialState

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The main process may have withdrawn proxy labels (refit_proxy): every process reads
        # the preferences after it, so that all train on the same pairs.
        PartialState().wait_for_everyone()
    rows = load_preferences(
        engine=engine,
        iterations=params.get("iterations"),
        with_seed=bool(params.get("with_seed")),
        settings=settings,
    )
    if not rows:
        on = f", criterion {dpo.criterion}" if dpo.criterion else ""
        raise RuntimeError(
            f"no preferences to train on (iterations {params.get('iterations')}{on})"
        )
    from transformers import AutoTokenizer

    chat = AutoTokenizer.from_pretrained(init.path).chat_template is not None
    records = preference_records(rows, chat=chat)
    log.info(
        "job %s: DPO on %d pairs, init v%s, ref v%s",
        job_id,
        len(records),
        init.version,
        ref.version if ref else init.version,
    )

    policies = data_dir / "policies"
    # The same path on every rank; a retry is a new job, so nothing stale can be there.
    tmp = policies / f".job-{job_id}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        metrics = train(
            init_path=init.path,
            ref_path=ref.path if ref else None,
            records=records,
            dpo=dpo,
            output_dir=tmp,
            callbacks=[_progress_callback(engine, job_id)],
        )
        state = PartialState()  # the trainer's: its processes and their process group
        # Every process has finished writing into tmp (DeepSpeed saves from all of them) before
        # the main process renames it.
        state.wait_for_everyone()
        if not main_rank:
            return None
        config = {
            "job_id": job_id,
            "init_version": init.version,
            "ref_version": ref.version if ref else init.version,
            "iterations": params.get("iterations"),
            "dpo": dpo.model_dump(),
            "metrics": metrics,
        }
        (tmp / CHECKPOINT_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if settings.generation.backend == "vllm":
            save_check_reference(tmp)
        with transaction(engine) as session:
            version = max(p.version for p in crud.list_policies(session=session)) + 1
            target = checkpoint_dir(data_dir, version)
            install_checkpoint(tmp, target)
            candidate = crud.create_policy(
                session=session,
                version=version,
                path=str(target.resolve()),
                status=PolicyStatus.candidate,
                parent_id=init.id,
                iteration_k=params.get("iteration_k"),
                config=config,
                metrics={"train": metrics},
            )
            jobs.heartbeat(
                session=session,
                job_id=job_id,
                progress=0.9,
                result={"phase": "trained", "candidate_version": version, "train": metrics},
            )
    finally:
        if main_rank:
            shutil.rmtree(tmp, ignore_errors=True)
    return candidate


def save_check_reference(checkpoint: Path) -> None:
    """Save the vLLM check's reference beside the new checkpoint, so that the engine's check
    after a reload skips its transformers pass. Only a saving: never fails the job (without the
    file the check computes the reference itself)."""
    from labeling.vllm_engine import write_check_reference

    try:
        write_check_reference(checkpoint)
    except Exception as exc:
        log.warning("vLLM check reference not saved (the check will compute it): %s", exc)


def release_generation_worker(data_dir: Path) -> None:
    """Have the generation worker, if one runs, free its memory while this process trains (it
    loads a policy again at the evaluation's first request). Never fails the job."""
    from labeling.vllm_worker import release_worker

    try:
        released = release_worker(data_dir)
    except Exception as exc:  # the worker only frees memory here; training goes on without it
        log.warning("generation worker: release failed: %s", exc)
        return
    log.info("generation worker: %s", released or "none running")


def evaluate_job(*, engine, settings, job_id: int, candidate_version: int) -> dict[str, Any]:
    """Held-out evaluation of the job's candidate; moves its iteration to `evaluating`."""
    from training.evaluate import evaluate_candidate

    with transaction(engine) as session:
        job = jobs.get_job(session=session, job_id=job_id)
        iteration_id = job.params.get("iteration_id")
        if iteration_id is not None:
            iteration = crud.get_iteration(session=session, iteration_id=iteration_id)
            if iteration.state == IterationState.training:
                crud.set_iteration_state(
                    session=session, iteration_id=iteration_id, state=IterationState.evaluating
                )
        jobs.heartbeat(session=session, job_id=job_id, result={"phase": "evaluating"})
    return evaluate_candidate(
        engine=engine,
        settings=settings,
        candidate_version=candidate_version,
        against=job.params.get("eval_against"),
    )


def refit_proxy(*, engine, settings, job_id: int) -> None:
    """Refit the proxy from all human labels (a new proxy version) before training. The proxy
    only advises, so a failed refit is recorded on the job and the training goes on."""
    from labeling.proxy import refit_proxy as refit

    with transaction(engine) as session:
        jobs.heartbeat(session=session, job_id=job_id, result={"phase": "proxy"})
    try:
        version = refit(engine=engine, settings=settings)
        outcome: dict[str, Any] = (
            {"skipped": "too few human labels"}
            if version is None
            else {"version": version.version, "n_labels": version.n_labels}
        )
    except Exception as exc:
        log.exception("job %s: proxy refit failed", job_id)
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    with transaction(engine) as session:
        jobs.heartbeat(session=session, job_id=job_id, result={"proxy": outcome})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.dpo_job", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--job-id", type=int, required=True)
    parser.add_argument("--database-url", default=os.environ.get("PREFLOOP_DATABASE_URL"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    die_with_launcher()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(args.data_dir)
    url = args.database_url or settings.resolved_database_url
    engine = make_engine(url, pool=settings.database)
    main_rank = main_process()
    rank, world_size = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    log.info("job %s: process %s of %s (pid %s)", args.job_id, rank, world_size, os.getpid())
    try:
        with transaction(engine) as session:
            job = jobs.get_job(session=session, job_id=args.job_id)
            if main_rank and job.status == JobStatus.queued:
                jobs.start_job(session=session, job_id=args.job_id, pid=os.getpid())
        settings = job_settings(job.params, args.data_dir, url)
        previous = job.params.get("previous_result", {})
        if main_rank and job.params.get("refit_proxy") and "proxy" not in previous:
            refit_proxy(engine=engine, settings=settings, job_id=args.job_id)
        # A retry whose first attempt got as far as registering its candidate only evaluates.
        done_version = previous.get("candidate_version")
        if done_version is None:
            candidate = run_job(engine=engine, data_dir=settings.data_dir, job_id=args.job_id)
            done_version = candidate.version if candidate else None
        if not main_rank:
            return 0
        evaluation = {}
        if job.params.get("evaluate", True):
            evaluation = evaluate_job(
                engine=engine, settings=settings, job_id=args.job_id, candidate_version=done_version
            )
        with transaction(engine) as session:
            jobs.finish_job(
                session=session,
                job_id=args.job_id,
                result={"phase": "done", "candidate_version": done_version, "eval": evaluation},
            )
        log.info("job %s: candidate v%s done", args.job_id, done_version)
        return 0
    except Exception as exc:
        log.exception("job %s failed", args.job_id)
        if not main_rank:
            # The launcher ends the other processes and exits non-zero; the runner fails the job.
            return 1
        error = f"{type(exc).__name__}: {exc}"
        with transaction(engine) as session:
            jobs.fail_job(session=session, job_id=args.job_id, error=error, kind=error_kind(exc))
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
