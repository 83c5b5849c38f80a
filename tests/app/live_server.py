"""A real `prefloop serve` on a temporary data directory, for browser tests and the benchmark.

The server runs as a subprocess through the CLI, exactly as a user starts it; the data is created
beforehand through storage's functions.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlmodel import select

from app.auth import generate_token, hash_password, hash_token
from storage import crud
from storage.db import transaction, upgrade
from storage.models import Pair, Prompt, Response, Role, Suggestion
from storage.runtime import Runtime, open_runtime

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct-horse-battery"
# Debian's chromium, driven by Playwright (the browser tests and the app benchmark).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class LiveServer:
    url: str
    rt: Runtime
    data_dir: Path
    process: subprocess.Popen
    log: Path
    users: dict[str, int] = field(default_factory=dict)

    def kill_hard(self) -> None:
        """kill -9 the server and its worker processes at once, as a lost host would go."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_users(rt: Runtime, names_roles: dict[str, Role]) -> dict[str, int]:
    password_hash = hash_password(PASSWORD)
    ids = {}
    with transaction(rt.engine) as session:
        for name, role in names_roles.items():
            user = crud.create_user(
                session=session, name=name, role=role, password_hash=password_hash
            )
            ids[name] = user.id
    return ids


def issue_tokens(rt: Runtime, names: list[str]) -> list[str]:
    """A new API token for each user, in order."""
    tokens = []
    with transaction(rt.engine) as session:
        for name in names:
            token = generate_token()
            user = crud.get_user_by_name(session=session, name=name)
            crud.update_user(session=session, user_id=user.id, token_hash=hash_token(token))
            tokens.append(token)
    return tokens


def seed_pairs(
    rt: Runtime,
    items: Sequence[tuple[str, str, str]],
    *,
    p_a: float | None = None,
    overlap: int = 1,
) -> list[int]:
    """One pair per (prompt, response a, response b); with `p_a`, a proxy suggestion too."""
    pair_ids = []
    with transaction(rt.engine) as session:
        crud.add_prompts(session=session, prompts=[crud.PromptIn(text=p) for p, _, _ in items])
        for prompt_text, text_a, text_b in items:
            prompt_id = session.exec(
                select(Prompt.id).where(Prompt.content_hash == crud.prompt_hash(prompt_text))
            ).one()
            a = Response(prompt_id=prompt_id, text=text_a)
            b = Response(prompt_id=prompt_id, text=text_b)
            session.add_all([a, b])
            session.flush()
            pair = Pair(
                prompt_id=prompt_id, response_a_id=a.id, response_b_id=b.id, overlap=overlap
            )
            session.add(pair)
            session.flush()
            if p_a is not None:
                session.add(
                    Suggestion(pair_id=pair.id, p_a=p_a, uncertainty=0.05, agent="proxy:v1")
                )
            pair_ids.append(pair.id)
    return pair_ids


@contextmanager
def live_server(
    data_dir: Path, *, scheduler: bool = False, workers: int = 1
) -> Iterator[LiveServer]:
    """Start `prefloop serve` on a free port of 127.0.0.1 and wait for /healthz."""
    rt = open_runtime(data_dir)
    upgrade(rt.engine)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    args = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
    args += ["--data-dir", str(data_dir), "--port", str(port), "--host", "127.0.0.1"]
    if not scheduler:
        args.append("--no-scheduler")
    args += ["--workers", str(workers)]
    log = data_dir / "serve.log"
    with log.open("wb") as out:
        # its own process group: kill_hard takes the workers with it
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    server = LiveServer(url=url, rt=rt, data_dir=data_dir, process=process, log=log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prefloop serve exited:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefloop serve did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        rt.engine.dispose()
