"""`prefloop worker`: the vLLM generation worker of a data directory (generation.backend = vllm)."""

from __future__ import annotations

import json

import typer

from app.cli_common import DataDir, fail, runtime
from storage import crud
from storage.db import transaction
from storage.runtime import Runtime
from storage.settings import DEFAULT_DATA_DIR

worker_cli = typer.Typer(
    help="The vLLM generation worker: one engine for every iteration's generation and evaluation.",
    no_args_is_help=True,
)


@worker_cli.command("start")
def start(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Start the worker (if none runs) and load the deployed policy into its engine, so that the
    next round does not wait for the engine to start. It keeps running until `worker stop`."""
    from labeling.vllm_worker import WorkerError, WorkerSampler

    rt = runtime(data_dir)
    settings = rt.effective_settings()
    if settings.generation.backend != "vllm":
        raise fail('generation.backend is "transformers": only vllm runs a generation worker')
    with transaction(rt.engine, readonly=True) as session:
        policy = crud.deployed_policy(session=session)
    if policy is None:
        raise fail("no deployed policy to load: run `prefloop init` first")
    try:
        sampler = WorkerSampler(policy.path, settings.generation, data_dir=settings.data_dir)
    except WorkerError as exc:
        raise fail(str(exc)) from None
    sampler.close()
    typer.echo(f"generation worker serves v{policy.version}: {json.dumps(sampler.load_report)}")


@worker_cli.command("status")
def status(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """The worker's pid, engine state, the policy it serves and how it loaded each one."""
    from labeling.vllm_worker import worker_status

    state = worker_status(data_dir)
    if state is None:
        typer.echo("no generation worker is running")
        raise typer.Exit(1)
    typer.echo(json.dumps(state, indent=2))


@worker_cli.command("stop")
def stop(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Stop the worker: its engine shuts down and frees its memory."""
    from labeling.vllm_worker import stop_worker

    typer.echo("generation worker stopped" if stop_worker(data_dir) else "none was running")


def stop_generation_worker(rt: Runtime) -> None:
    """What `prefloop serve` (with its scheduler) and `prefloop loop` do as they end: stop the
    vLLM generation worker their rounds started. A no-op for the transformers backend."""
    if rt.settings.generation.backend == "vllm":
        from labeling.vllm_worker import stop_worker

        stop_worker(rt.settings.data_dir)
