"""A restart of PostgreSQL while the web app runs: requests get a clear 503 while the database is
down (not a hang, not a 500), and succeed again once it is back, with no restart of prefloop.

The test runs its own PostgreSQL 15 cluster (initdb as the postgres user, a free port on
127.0.0.1), since it stops and starts the server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.auth import generate_password, generate_token, hash_password, hash_token
from app.server import create_app
from app.ui.guard import DATABASE_DOWN
from storage import crud
from storage.db import PING_AFTER_IDLE_S, transaction, upgrade
from storage.models import Role
from storage.runtime import open_runtime

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = generate_password()


def _as_postgres(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    """(url, stop, start) of a private PostgreSQL cluster."""
    if not (BIN / "pg_ctl").exists() or os.geteuid() != 0 or not shutil.which("runuser"):
        if os.environ.get("CI"):
            pytest.fail("CI needs PostgreSQL 15's binaries and root (.ci/run installs them)")
        pytest.skip("needs PostgreSQL 15's binaries and root to run them as postgres")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="prefloop-pg-"))
    shutil.chown(root, "postgres")
    pgdata = root / "data"
    port = _free_port()
    _as_postgres(str(BIN / "initdb"), "-D", str(pgdata), "-U", "prefloop", "-A", "trust")
    options = f"-p {port} -k {pgdata} -c listen_addresses=127.0.0.1 -c fsync=off"

    def start() -> None:
        # -l: the server's output goes to a file, not to the pipes this process reads
        log = str(root / "log")
        _as_postgres(
            str(BIN / "pg_ctl"), "-D", str(pgdata), "-w", "-l", log, "-o", options, "start"
        )

    def stop() -> None:
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop")

    start()
    try:
        yield f"postgresql://prefloop@127.0.0.1:{port}/postgres", stop, start
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(BIN / "pg_ctl"),
                "-D",
                str(pgdata),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _get(client: TestClient, path: str, headers: dict) -> tuple[int, dict, dict]:
    """GET in a thread, so a request that hangs fails the test instead of blocking it."""
    answer: dict = {}

    def call() -> None:
        response = client.get(path, headers=headers)
        is_json = response.headers.get("content-type", "").startswith("application/json")
        body = response.json() if is_json else {"text": response.text}
        answer.update(status=response.status_code, json=body, headers=response.headers)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=60)  # only a hang takes this long: the driver's connect timeout is 5 s
    assert not thread.is_alive(), f"GET {path} hung with the database down"
    return answer["status"], answer["json"], answer["headers"]


def test_a_database_restart_is_a_503_then_recovers(cluster, tmp_path, monkeypatch):
    url, stop, start = cluster
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", url)
    rt = open_runtime(tmp_path)
    upgrade(rt.engine)
    token = generate_token()
    with transaction(rt.engine) as session:
        user = crud.create_user(
            session=session, name="ann", role=Role.annotator, password_hash=hash_password(PASSWORD)
        )
        crud.update_user(session=session, user_id=user.id, token_hash=hash_token(token))
    client = TestClient(create_app(rt), raise_server_exceptions=False)
    headers = {"Authorization": f"Bearer {token}"}

    assert _get(client, "/api/v1/status", headers)[0] == 200
    assert _get(client, "/healthz", {})[0] == 200
    login = client.post(
        "/login", data={"name": "ann", "password": PASSWORD}, follow_redirects=False
    )
    assert login.status_code == 303  # the client keeps the session cookie
    assert _get(client, "/label/", {})[0] == 200

    config = client.get("/label/config").json()
    show = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "show")

    def page_event() -> tuple[int, dict, dict]:
        """The labeling page's first event, as the page POSTs it (in a thread: a hang fails)."""
        answer: dict = {}

        def call() -> None:
            body = {"data": [], "fn_index": show, "session_hash": "restart0001"}
            response = client.post("/label/gradio_api/run/show", json=body)
            answer.update(status=response.status_code, json=response.json(), h=response.headers)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the labeling page's event hung with the database down"
        return answer["status"], answer["json"], answer["h"]

    assert page_event()[0] == 200

    stop()
    status, body, response_headers = _get(client, "/api/v1/status", headers)
    assert status == 503 and "database unavailable" in body["detail"]
    assert response_headers["retry-after"].isdigit()
    assert _get(client, "/healthz", {})[0] == 503
    # the page shows what happened (Gradio's own answer would be a bare "Error" and a 500)
    status, body, response_headers = page_event()
    assert status == 503 and response_headers["retry-after"].isdigit()
    assert body["error"] == DATABASE_DOWN

    start()
    status, body, _ = _get(client, "/api/v1/status", headers)
    assert status == 200, body
    assert _get(client, "/healthz", {})[0] == 200
    assert _get(client, "/label/", {})[0] == 200
    assert page_event()[0] == 200
    rt.engine.dispose()


def test_a_restart_between_requests_goes_unseen(cluster, tmp_path, monkeypatch):
    """No request while the database was down: the pooled connections, lost with the restart,
    are checked after sitting idle and replaced, so the first request after it succeeds."""
    url, stop, start = cluster
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", url)
    rt = open_runtime(tmp_path)
    upgrade(rt.engine)
    client = TestClient(create_app(rt), raise_server_exceptions=False)
    assert _get(client, "/healthz", {})[0] == 200
    stop()
    start()
    time.sleep(PING_AFTER_IDLE_S)  # pg_ctl takes longer; this makes it certain
    assert _get(client, "/healthz", {})[0] == 200
    rt.engine.dispose()
