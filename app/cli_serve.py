"""`prefloop serve`: the web app (and, unless --no-scheduler, the loop's scheduler)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from app.cli_common import DataDir, fail, runtime
from app.cli_worker import stop_generation_worker
from storage.scheduler_lock import SchedulerRunning
from storage.settings import DEFAULT_DATA_DIR


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    no_scheduler: Annotated[
        bool,
        typer.Option("--no-scheduler", help="Serve only (extra replicas): no training triggers."),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Server processes sharing the port (default 1; about one per core). The "
            "scheduler runs once, in this process.",
        ),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Serve the labeling and admin views (http://HOST:PORT/), the API and /healthz."""
    given = {"host": host, "port": port, "workers": workers}
    rt = runtime(data_dir, server={k: v for k, v in given.items() if v is not None})
    server = rt.settings.server
    scheduler = server.scheduler and not no_scheduler
    shown_host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
    processes = f"{server.workers} worker processes, " if server.workers > 1 else ""
    typer.echo(
        f"prefloop is serving http://{shown_host}:{server.port}/ "
        f"({processes}scheduler {'on' if scheduler else 'off'}; Ctrl-C stops it)\n"
        "  sign in as a user of `prefloop users list`: the first admin is 'admin', with the "
        "password `prefloop init` showed\n"
        "  (or set one: `prefloop users passwd admin`); add annotators with "
        "`prefloop users add NAME` or in the admin view"
    )
    _run(rt, scheduler=scheduler)


def _run(rt, *, scheduler: bool) -> None:
    import uvicorn

    from app.scheduler import start_scheduler
    from app.server import create_app
    from app.sessions import load_or_create_secret

    server = rt.settings.server
    options = {"host": server.host, "port": server.port, "log_level": "warning"}
    # One scheduler, in this process, however many processes serve the app; one per database,
    # however many replicas serve it.
    try:
        handle = start_scheduler(rt) if scheduler else None
    except SchedulerRunning as exc:
        raise fail(
            f"{exc}. Start this replica with --no-scheduler (or [server] scheduler = false): "
            "exactly one replica runs the scheduler"
        ) from None
    try:
        if server.workers == 1:
            uvicorn.run(create_app(rt), **options)
        else:
            # Workers are spawned interpreters that build the app from the data directory; the
            # session key is made here, once, before they race to create it.
            load_or_create_secret(rt.settings.data_dir)
            os.environ["PREFLOOP_DATA_DIR"] = str(rt.settings.data_dir.resolve())
            uvicorn.run("app.server:app_from_env", factory=True, workers=server.workers, **options)
    finally:
        if handle is not None:
            handle.shutdown(wait=False)
            # issue 13: the vLLM generation worker, which the scheduler's rounds used, ends too
            stop_generation_worker(rt)
