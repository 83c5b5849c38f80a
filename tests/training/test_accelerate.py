"""Training through `accelerate launch` (`dpo.accelerate_config`): the shipped configs, and one
real iteration trained data-parallel by two CPU processes (gloo; `cpu_2proc.yaml`), launched by
the runner as on several GPUs. Only the main process writes the job row and the checkpoint.

The gate is the test's (`OPEN_GATE`), as in test_iteration.py; learning is asserted with the
teacher-forced DPO reward margin on held-out prompts."""

from __future__ import annotations

import math
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from storage import crud, jobs
from storage.db import transaction
from storage.models import ErrorKind, JobStatus, Split
from tests.training.conftest import (
    OPEN_GATE,
    SMALL,
    dpo_margin,
    labeled_iteration,
    make_loop_runtime,
    reference_pairs,
    unlabeled_iteration_runtime,
    weights,
)
from training.iteration import TRAIN, queue_training, train_iteration
from training.runner import ACCELERATE_CONFIGS, run_child

TWO_CPU_PROCESSES = {"accelerate_config": "cpu_2proc.yaml", "threads": 1}  # a core each
SHIPPED = {
    "cpu_2proc.yaml": ("MULTI_GPU", 2, "no"),  # torchrun's local processes, kept on the CPU
    "one_gpu.yaml": ("NO", 1, "bf16"),
    "multi_gpu_ddp.yaml": ("MULTI_GPU", 8, "bf16"),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, "bf16"),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 8, "bf16"),
}


def test_shipped_accelerate_configs_are_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(SHIPPED)
    for name, (distributed_type, n, precision) in SHIPPED.items():
        config = load_config_from_file(str(ACCELERATE_CONFIGS / name))
        assert (config.distributed_type, config.num_processes) == (distributed_type, n), name
        assert config.mixed_precision == precision and config.use_cpu == (name == "cpu_2proc.yaml")
        if distributed_type == "DEEPSPEED":
            stage = int(name[-6])
            assert config.deepspeed_config["zero_stage"] == stage
            # left to [dpo]: a fixed value here would have to match the trainer's
            assert "gradient_accumulation_steps" not in config.deepspeed_config
    zero3 = load_config_from_file(str(ACCELERATE_CONFIGS / "deepspeed_zero3.yaml"))
    assert zero3.deepspeed_config["zero3_save_16bit_model"]  # a version is a complete model


def test_an_accelerate_config_that_names_no_file_fails_the_iteration_at_once(tmp_path):
    rt = unlabeled_iteration_runtime(tmp_path, dpo={"accelerate_config": "no_such.yaml"})
    job = queue_training(engine=rt.engine, settings=rt.settings)
    report = train_iteration(engine=rt.engine, settings=rt.settings, job_id=job.id)
    assert report.decision == "failed" and report.error.startswith("dpo.accelerate_config")
    assert "'no_such.yaml'" in report.error and "cpu_2proc.yaml" in report.error
    with transaction(rt.engine, readonly=True) as session:
        (job,) = jobs.list_jobs(session=session, kind=TRAIN)  # no retry
    assert job.status == JobStatus.failed and job.error_kind == ErrorKind.permanent
    rt.engine.dispose()


def _record_job_writes(db_path: Path) -> None:
    """Every update of a job row, as a row of `job_write` (status, the result's phase)."""
    with sqlite3.connect(db_path) as db:
        db.executescript(
            """
            CREATE TABLE job_write (n INTEGER PRIMARY KEY, status TEXT, phase TEXT);
            CREATE TRIGGER job_write_log AFTER UPDATE ON job BEGIN
                INSERT INTO job_write (status, phase)
                VALUES (NEW.status, json_extract(NEW.result, '$.phase'));
            END;
            """
        )
    db.close()


def _job_writes(db_path: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db_path) as db:
        writes = db.execute("SELECT status, phase FROM job_write ORDER BY n").fetchall()
    db.close()
    return writes


@pytest.mark.slow
def test_two_processes_train_an_iteration_and_only_the_main_one_writes(
    tmp_path, demo_policy_dir, monkeypatch
):
    monkeypatch.delenv("PREFLOOP_DATABASE_URL", raising=False)  # the trigger below is SQLite's
    rt = make_loop_runtime(
        tmp_path / "data", demo_policy_dir, eval=OPEN_GATE, dpo=TWO_CPU_PROCESSES
    )
    db_path = rt.settings.data_dir / "prefloop.db"
    assert rt.settings.resolved_database_url == f"sqlite:///{db_path}"
    labeled_iteration(rt, 24)
    _record_job_writes(db_path)

    report = train_iteration(engine=rt.engine, settings=rt.settings, continue_loop=False)
    assert report.decision == "deployed", report
    assert report.candidate_version == 1 and report.attempts == 1

    with transaction(rt.engine, readonly=True) as session:
        (job,) = jobs.list_jobs(session=session, kind=TRAIN)
        v0, candidate = crud.list_policies(session=session)
    assert job.status == JobStatus.succeeded and job.progress == 1.0
    # Two processes, each a batch of 8 per step: 24 pairs take 2 steps (one process: 3).
    train = job.result["train"]
    assert train["world_size"] == 2 and train["n_pairs"] == 24
    assert train["steps"] == math.ceil(24 / (2 * SMALL["dpo"]["per_device_train_batch_size"]))
    assert job.result["latest"]["step"] == train["steps"]  # progress, from the main process
    log = Path(job.log_path).read_text()
    assert f"job {job.id}: process 0 of 2" in log and f"job {job.id}: process 1 of 2" in log

    # Only the main process wrote the job row: each step once, in order (and a training
    # heartbeat or two between "data" and "trained").
    writes = _job_writes(db_path)
    assert [write for write in writes if write[1] != "training"] == [
        ("queued", None),  # the runner: the log's path
        ("running", None),  # started
        ("running", "proxy"),
        ("running", "proxy"),  # the refit's outcome
        ("running", "data"),
        ("running", "trained"),  # the candidate registered
        ("running", "evaluating"),
        ("succeeded", "done"),
    ], writes
    # ... and installed one checkpoint, now deployed
    assert candidate.version == 1 and candidate.status == "deployed" and v0.status == "retired"
    policies = rt.settings.data_dir / "policies"
    assert sorted(p.name for p in policies.iterdir()) == ["v0", "v1"]
    assert Path(candidate.path) == policies / "v1"
    assert candidate.config["metrics"]["world_size"] == 2

    # It learned: the weights moved and the chosen-over-rejected margin rose on held-out prompts.
    before, after = weights(v0.path), weights(candidate.path)
    assert any(not (before[k] == after[k]).all() for k in before)
    assert dpo_margin(candidate.path, v0.path, reference_pairs(rt, Split.eval, 16)) > 0.5
    assert train["first_loss"] > train["final_loss"]
    rt.engine.dispose()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has ended, whoever reaps it


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("end", ["SIGKILL", "timeout"])
def test_the_launchers_workers_end_with_it(tmp_path, demo_policy_dir, end):
    """A launcher that times out is stopped (SIGTERM, on which torchrun stops its workers); one
    killed outright (SIGKILL, the OOM killer) cannot stop them, and they die with it rather than
    train on and hold their devices."""
    rt = make_loop_runtime(tmp_path / "data", demo_policy_dir, dpo=TWO_CPU_PROCESSES)
    labeled_iteration(rt, 8)
    job = queue_training(engine=rt.engine, settings=rt.settings, refit_proxy=False, evaluate=False)
    log = rt.settings.data_dir / "logs" / f"job-{job.id}.log"
    workers: list[int] = []

    def once_both_workers_run(proc):
        started = rf"job {job.id}: process \d of 2 \(pid (\d+)\)"
        deadline = time.monotonic() + 120
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers[:] = [int(pid) for pid in re.findall(started, log.read_text())]
            time.sleep(0.05)
        if end == "SIGKILL":
            os.kill(proc.pid, signal.SIGKILL)

    failed = run_child(
        engine=rt.engine,
        settings=rt.settings,
        job_id=job.id,
        on_start=once_both_workers_run,
        timeout=1 if end == "timeout" else None,  # over by the time both workers run
    )
    assert len(workers) == 2, log.read_text()
    assert failed.status == JobStatus.failed
    assert ("SIGKILL" if end == "SIGKILL" else "timed out after 1s") in failed.error
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)]
    assert not list((rt.settings.data_dir / "policies").glob(".job-*"))
    rt.engine.dispose()
