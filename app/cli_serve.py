"""`prefloop serve`: the web app (and, unless --no-scheduler, the loop's scheduler)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli_common import DataDir, fail, runtime
from storage.settings import DEFAULT_DATA_DIR


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    no_scheduler: Annotated[
        bool,
        typer.Option("--no-scheduler", help="Serve only (extra replicas): no training triggers."),
    ] = False,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Serve the labeling and admin views (http://HOST:PORT/), the API and /healthz."""
    import uvicorn

    from app.server import create_app
    from storage.db import current_revision

    flags = {"server": {k: v for k, v in {"host": host, "port": port}.items() if v is not None}}
    rt = runtime(data_dir, **flags)
    if current_revision(rt.engine) is None:
        raise fail(f"no database in {data_dir}: run `prefloop init --data-dir {data_dir}` first")
    server = rt.settings.server
    scheduler = server.scheduler and not no_scheduler
    app = create_app(rt, scheduler=scheduler)
    shown_host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
    typer.echo(
        f"prefloop is serving http://{shown_host}:{server.port}/ "
        f"(scheduler {'on' if scheduler else 'off'}; Ctrl-C stops it)\n"
        "  sign in as a user of `prefloop users list`: the first admin is 'admin', with the "
        "password `prefloop init` showed\n"
        "  (or set one: `prefloop users passwd admin`); add annotators with "
        "`prefloop users add NAME` or in the admin view"
    )
    uvicorn.run(app, host=server.host, port=server.port, log_level="warning")
