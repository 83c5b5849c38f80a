"""Start a job's child process and watch it until it ends.

The child is `python -m training.dpo_job --data-dir D --job-id N`, or the same module through
`accelerate launch --config_file C` when `dpo.accelerate_config` is set (several GPUs, DeepSpeed,
FSDP); `C` is a path or the name of a config shipped in `training/accelerate/`. Its stdout and
stderr go to `<data_dir>/logs/job-N.log`. A child this process stops gets SIGTERM first, on
which `accelerate launch` stops its worker processes, then SIGKILL.

A failure's kind (`ErrorKind`) travels on the job row, not in the exit status (which `accelerate
launch` does not pass on). A child that catches an exception fails its job itself with the kind
`error_kind` gives: transient for out of memory, permanent for any other exception its code
raises (no preferences to train on, a bad setting, a bug), which would recur on a retry. A child
that dies without ending its job (killed, a signal, a crash in native code) has the job failed
here, transient, with its exit status and the tail of its log. `run_with_retries` retries
transient failures only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from storage import jobs
from storage.db import transaction
from storage.models import ErrorKind, Job, JobStatus
from storage.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_CONFIGS = Path(__file__).resolve().parent / "accelerate"


def accelerate_config_file(settings: Settings) -> Path:
    """The file `dpo.accelerate_config` names: a path, relative ones to the data directory, or
    a config shipped in training/accelerate/. Raises FileNotFoundError for neither."""
    name = Path(settings.dpo.accelerate_config).expanduser()
    for path in (settings.data_dir / name, ACCELERATE_CONFIGS / name):  # absolute: name itself
        if path.is_file():
            return path.resolve()
    shipped = ", ".join(sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")))
    raise FileNotFoundError(
        f"dpo.accelerate_config: no file {str(name)!r} (a path, or one of prefloop's: {shipped})"
    )


def child_command(settings: Settings, job_id: int, module: str = "training.dpo_job") -> list[str]:
    args = ["-m", module, "--data-dir", str(settings.data_dir.resolve()), "--job-id", str(job_id)]
    if settings.dpo.accelerate_config:
        launch = [sys.executable, "-m", "accelerate.commands.launch"]
        return [*launch, "--config_file", str(accelerate_config_file(settings)), *args]
    return [sys.executable, *args]


def child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    # The child imports the same code as this process and opens the same database, whatever
    # its working directory and however this process got its database URL.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env["PREFLOOP_DATABASE_URL"] = settings.resolved_database_url
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if settings.dpo.accelerate_config:
        env["PREFLOOP_DIE_WITH_LAUNCHER"] = "1"  # the workers: see training.dpo_job
    return env


def error_kind(exc: BaseException) -> ErrorKind:
    """The kind of failure a job's child reports for an exception it caught: out of memory
    (host or GPU) may pass on a retry; any other exception from the job's code recurs."""
    oom: tuple[type[BaseException], ...] = (MemoryError,)
    torch = sys.modules.get("torch")  # not imported: the exception is no torch OOM
    if torch is not None:
        oom += (torch.OutOfMemoryError,)
    return ErrorKind.transient if isinstance(exc, oom) else ErrorKind.permanent


def _log_tail(path: Path, n: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM, and SIGKILL after `grace` seconds: a SIGKILL of `accelerate launch` would leave
    its workers running (they die with it only on Linux, see `training.dpo_job`)."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_child(
    *,
    engine,
    settings: Settings,
    job_id: int,
    module: str = "training.dpo_job",
    timeout: float | None = None,
    on_start=None,
    poll_seconds: float = 0.5,
) -> Job:
    """Run job `job_id` in a child process; return the job row once the child has exited.

    `on_start(proc)` is called once the child runs (tests use it to kill the child)."""
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"job-{job_id}.log"
    with transaction(engine) as session:
        jobs.set_log_path(session=session, job_id=job_id, log_path=str(log_path))
        try:
            command = child_command(settings, job_id, module)
        except FileNotFoundError as exc:  # a setting names no file: a retry would fail the same
            return jobs.fail_job(
                session=session, job_id=job_id, error=str(exc), kind=ErrorKind.permanent
            )
    started, timed_out = time.monotonic(), False
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(settings),
            cwd=settings.data_dir,
        )
        if on_start is not None:
            on_start(proc)
        try:
            while proc.poll() is None:
                if timeout is not None and time.monotonic() - started > timeout:
                    timed_out = True
                    _stop(proc)
                    break
                time.sleep(poll_seconds)
        except BaseException:
            _stop(proc)  # this process is going down (Ctrl-C, shutdown): take the child along
            raise
    code = proc.returncode
    with transaction(engine) as session:
        job = jobs.get_job(session=session, job_id=job_id)
        if job.status in (JobStatus.queued, JobStatus.running):
            if timed_out:
                why = f"timed out after {timeout:.0f}s"
            elif code is not None and code < 0:
                why = f"killed by signal {signal.Signals(-code).name}"
            else:
                why = f"exited with status {code}"
            tail = _log_tail(log_path)
            # what the dead child was writing; a finished checkpoint is only ever renamed
            shutil.rmtree(settings.data_dir / "policies" / f".job-{job_id}.tmp", ignore_errors=True)
            job = jobs.fail_job(
                session=session, job_id=job_id, error=f"training process {why}\n{tail}".strip()
            )
    return job


def run_with_retries(
    *, engine, settings: Settings, job_id: int, max_attempts: int | None = None, **kwargs
) -> Job:
    """`run_child`, then a retry (a new job row, attempts + 1) for each transient failure, up
    to `max_attempts` (default `loop.max_attempts`). Returns the last attempt's job."""
    max_attempts = max_attempts or settings.loop.max_attempts
    while True:
        job = run_child(engine=engine, settings=settings, job_id=job_id, **kwargs)
        if job.status != JobStatus.failed:
            return job
        with transaction(engine) as session:
            retry = jobs.retry_job(session=session, job_id=job_id, max_attempts=max_attempts)
        if retry is None:
            return job
        job_id = retry.id
