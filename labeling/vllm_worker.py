"""The generation worker: one process per data directory, holding one vLLM engine across iterations.

    python -m labeling.vllm_worker --data-dir D     # what `WorkerSampler` starts when none runs
    prefloop worker start | status | stop --data-dir D

With `generation.backend = "vllm"`, generation rounds (`labeling.iteration`) and evaluation
(`training.evaluate`, in the training job's child) sample through `WorkerSampler`, a client of
this process: the engine starts once and each new policy is loaded into it in place, checked
against its checkpoint, with a restart as the fallback (`labeling.vllm_engine`). Whoever needs the
worker first starts it, with `generation.vllm_python` (a Python with vllm; default: the one
running prefloop), detached: it outlives the command that started it, which is the point; `prefloop
worker stop` (and the end of `prefloop serve` or `prefloop loop`) stops it. A request that fails
(a bad checkpoint, an engine that died) fails that round only: the worker answers with the error
and serves the next request, with a new engine if the old one died. While a DPO child trains, it
asks the worker to release its memory (`generation.vllm_release`).

The worker listens on 127.0.0.1 on a port of the system's choosing; `<data_dir>/run/
generation-worker.json` (mode 0600) holds its pid, port and a random key that a client must prove
it holds (`multiprocessing.connection`'s HMAC handshake). Its log is `<data_dir>/logs/
generation-worker.log`. Requests are handled one at a time, in the order they arrive; `status`
is answered at once. This module imports neither torch nor vllm: the server and the scheduler
import it to talk to the worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from multiprocessing.connection import AuthenticationError, Client, Connection, Listener
from pathlib import Path
from typing import Any

from labeling.generation import PromptLike, Sample
from storage.files import write_atomic
from storage.settings import GenerationSettings

log = logging.getLogger("prefloop.worker")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ADDRESS_FILE = "run/generation-worker.json"
LOCK_FILE = "run/generation-worker.lock"
LOG_FILE = "logs/generation-worker.log"
START_TIMEOUT = 300.0  # seconds for a new worker to listen (its imports, on a busy machine)

_spawned: list[subprocess.Popen] = []  # started here; kept so Python does not warn on exit


class WorkerError(RuntimeError):
    pass


# The client side: what the scheduler, the training child and the CLI use.


def worker_python(settings: GenerationSettings, data_dir: Path) -> str:
    """`generation.vllm_python` (relative: to the data directory), else this Python."""
    if not settings.vllm_python:
        return sys.executable
    python = Path(settings.vllm_python).expanduser()
    python = python if python.is_absolute() else data_dir / python
    if not os.access(python, os.X_OK):
        raise WorkerError(f"generation.vllm_python: {python} is not an executable Python")
    return str(python)


def read_address(data_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(data_dir) / ADDRESS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open(data_dir: Path) -> Connection | None:
    """A connection to the data directory's worker, or None when none is listening."""
    info = read_address(data_dir)
    if info is None or not _alive(int(info["pid"])):
        return None
    try:
        return Client((info["host"], int(info["port"])), authkey=bytes.fromhex(info["key"]))
    except (OSError, EOFError, AuthenticationError):
        return None


@contextlib.contextmanager
def _start_lock(data_dir: Path) -> Iterator[None]:
    """One process at a time decides whether to start a worker for `data_dir`."""
    import fcntl

    path = data_dir / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_tail(data_dir: Path, n: int = 3000) -> str:
    try:
        with (data_dir / LOG_FILE).open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def connect(data_dir: str | Path, settings: GenerationSettings | None = None) -> Connection | None:
    """A connection to `data_dir`'s generation worker. When none runs: start one if `settings`
    are given (its Python: `generation.vllm_python`), else return None."""
    data_dir = Path(data_dir).resolve()
    conn = _open(data_dir)
    if conn is not None or settings is None:
        return conn
    with _start_lock(data_dir):
        conn = _open(data_dir)  # another process may have started one meanwhile
        if conn is not None:
            return conn
        return _spawn(data_dir, settings)


def _spawn(data_dir: Path, settings: GenerationSettings) -> Connection:
    command = [worker_python(settings, data_dir), "-m", "labeling.vllm_worker"]
    command += ["--data-dir", str(data_dir)]
    env = dict(os.environ)
    # The worker imports this checkout's code, whichever environment its Python belongs to.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    (data_dir / LOG_FILE).parent.mkdir(parents=True, exist_ok=True)
    with (data_dir / LOG_FILE).open("ab") as log_file:
        proc = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=data_dir,
            start_new_session=True,  # a Ctrl-C meant for the command that started it
        )
    _spawned.append(proc)
    log.info("generation worker starting (pid %s): %s", proc.pid, " ".join(command))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WorkerError(
                f"the generation worker exited with status {proc.returncode} before it "
                f"listened; {data_dir / LOG_FILE} ends:\n{_log_tail(data_dir)}"
            )
        info = read_address(data_dir)
        if info is not None and int(info["pid"]) == proc.pid:
            conn = _open(data_dir)
            if conn is not None:
                return conn
        time.sleep(0.1)
    proc.terminate()
    raise WorkerError(f"the generation worker did not listen within {START_TIMEOUT:.0f}s")


def call(conn: Connection, op: str, **payload: Any) -> dict[str, Any]:
    """One request to the worker and its reply; a failed request raises WorkerError."""
    try:
        conn.send({"op": op, **payload})
        reply = conn.recv()
    except (EOFError, OSError) as exc:
        raise WorkerError(f"the generation worker went away during {op!r} ({exc!r})") from None
    if not reply.get("ok"):
        raise WorkerError(f"generation worker: {reply.get('error')}")
    return reply


def worker_status(data_dir: str | Path) -> dict[str, Any] | None:
    """The running worker's state (pid, engine, policy, loads), or None when none runs."""
    conn = connect(data_dir)
    if conn is None:
        return None
    with conn:
        return call(conn, "status")["status"]


def release_worker(data_dir: str | Path) -> dict[str, Any] | None:
    """Ask a running worker to free its memory (`generation.vllm_release`); starts none."""
    conn = connect(data_dir)
    if conn is None:
        return None
    with conn:
        return call(conn, "release")["release"]


def stop_worker(data_dir: str | Path, timeout: float = 120.0) -> bool:
    """Stop the data directory's worker (its engine shut down first); False if none ran."""
    info = read_address(data_dir)
    conn = connect(data_dir)
    if conn is None:
        return False
    with conn, contextlib.suppress(WorkerError):  # it may close the connection as it exits
        call(conn, "stop")
    pid = int(info["pid"]) if info else None
    deadline = time.monotonic() + timeout
    while pid is not None and _alive(pid) and time.monotonic() < deadline:
        for proc in _spawned:
            if proc.pid == pid:
                proc.poll()  # reap it, when it is this process's child
        time.sleep(0.1)
    if pid is not None and _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # its own session: the engine's processes too
    return True


class WorkerSampler:
    """The `Sampler` interface over the data directory's generation worker."""

    backend = "vllm"

    def __init__(
        self, policy_path: str | Path, settings: GenerationSettings, *, data_dir: str | Path
    ):
        self.policy = str(Path(policy_path).resolve())
        self.settings = settings
        self.conn = connect(data_dir, settings)
        self.load_report = self._call("load")["load"]
        log.info("generation worker serves %s: %s", self.policy, self.load_report)

    def _call(self, op: str, **payload: Any) -> dict[str, Any]:
        if self.conn is None:
            raise WorkerError("this sampler is closed")
        settings = self.settings.model_dump(mode="json")
        return call(self.conn, op, policy=self.policy, settings=settings, **payload)

    def sample(
        self,
        prompts: Sequence[PromptLike],
        *,
        n: int,
        temperatures: Sequence[float],
        seed: int = 0,
    ) -> list[list[Sample]]:
        reply = self._call(
            "sample", prompts=list(prompts), n=n, temperatures=list(temperatures), seed=seed
        )
        return [[Sample(**s) for s in row] for row in reply["rows"]]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None  # closing twice is harmless


# The worker process.


class Worker:
    """The engine and its requests, handled one at a time by the main thread."""

    def __init__(self) -> None:
        self.engine = None  # a VLLMEngine, made at the first request that needs one
        self.stopping = False
        self.started = time.time()
        self.counts = {"requests": 0, "failed": 0}
        self.last: dict[str, Any] | None = None  # the last load's report

    def status(self) -> dict[str, Any]:
        engine = self.engine
        running = engine is not None and engine.llm is not None
        return {
            "pid": os.getpid(),
            "python": sys.executable,
            "uptime_seconds": round(time.time() - self.started, 1),
            "engine": ("asleep" if engine.asleep else "running") if running else "stopped",
            "policy": engine.policy[0] if running and engine.policy else None,
            "loads": [h["how"] for h in engine.history] if engine else [],
            "last_load": self.last,
            **self.counts,
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        self.counts["requests"] += 1
        op = request.get("op")
        try:
            if op == "status":
                return {"ok": True, "status": self.status()}
            if op == "stop":
                self.stopping = True
                return {"ok": True}
            if op == "release":
                released = self.engine.release() if self.engine else {"released": "nothing"}
                return {"ok": True, "release": released}
            if op not in ("load", "sample"):
                raise ValueError(f"unknown request {op!r}")
            engine = self._engine(GenerationSettings.model_validate(request["settings"]))
            self.last = engine.load(request["policy"])
            if op == "load":
                return {"ok": True, "load": self.last}
            rows = engine.sample(
                request["prompts"],
                n=int(request["n"]),
                temperatures=request["temperatures"],
                seed=int(request.get("seed", 0)),
            )
            return {"ok": True, "rows": [[asdict(s) for s in row] for row in rows]}
        except Exception as exc:
            self.counts["failed"] += 1
            log.exception("request %r failed", op)
            self._drop_dead_engine(exc)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _engine(self, settings: GenerationSettings):
        if self.engine is None:
            import importlib.util

            from labeling.generation import VLLM_MISSING
            from labeling.vllm_engine import VLLMEngine

            if importlib.util.find_spec("vllm") is None:
                raise RuntimeError(f"{VLLM_MISSING} (the worker runs {sys.executable})")

            self.engine = VLLMEngine(settings)
        else:
            self.engine.configure(settings)
        return self.engine

    def _drop_dead_engine(self, exc: Exception) -> None:
        """An engine whose processes died is shut down, so the next request starts a new one."""
        if self.engine is None or self.engine.llm is None:
            return
        if type(exc).__name__ in ("EngineDeadError", "EngineGenerateError"):
            log.warning("the vLLM engine died: the next request starts a new one")
            with contextlib.suppress(Exception):
                self.engine.stop()
            self.engine.llm = None
            self.engine.policy = None


def _write_address(data_dir: Path, info: dict[str, Any]) -> None:
    write_atomic(data_dir / ADDRESS_FILE, json.dumps(info), mode=0o600)  # the key is a secret


def _serve_connection(conn: Connection, work: queue.Queue, worker: Worker) -> None:
    with conn:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            if isinstance(request, dict) and request.get("op") == "status":
                reply = worker.handle(request)  # at once, even while a round samples
            else:
                answer: queue.Queue = queue.Queue(maxsize=1)
                work.put((request, answer))
                reply = answer.get()
            try:
                conn.send(reply)
            except OSError:
                return  # the client went away; the next one gets the engine as it is now


def _accept(listener: Listener, work: queue.Queue, worker: Worker) -> None:
    while True:
        try:
            conn = listener.accept()
        except (AuthenticationError, EOFError, ConnectionError):
            continue  # a client without the key, or one that hung up mid-handshake
        except OSError:
            return  # the listener is closed
        threading.Thread(target=_serve_connection, args=(conn, work, worker), daemon=True).start()


def serve(data_dir: Path) -> None:
    """Listen for requests until a `stop` request or SIGTERM; the engine runs in this thread."""
    data_dir = data_dir.resolve()
    key = secrets.token_bytes(32)
    listener = Listener(("127.0.0.1", 0), authkey=key)
    host, port = listener.address
    worker = Worker()
    work: queue.Queue = queue.Queue()

    def on_term(signum, frame):
        worker.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=_accept, args=(listener, work, worker), daemon=True).start()
    _write_address(
        data_dir,
        {"pid": os.getpid(), "host": host, "port": port, "key": key.hex(), "started": time.time()},
    )
    log.info("generation worker %s listening on %s:%s", os.getpid(), host, port)
    try:
        while not worker.stopping:
            try:
                request, answer = work.get(timeout=0.5)
            except queue.Empty:
                continue
            answer.put(worker.handle(request))
    finally:
        log.info("generation worker %s stopping", os.getpid())
        listener.close()
        if worker.engine is not None:
            worker.engine.stop()
        info = read_address(data_dir)
        if info is not None and int(info["pid"]) == os.getpid():
            (data_dir / ADDRESS_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labeling.vllm_worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(args.data_dir)
    return 0


if __name__ == "__main__":  # vLLM's engine is a spawned process: it imports this module again
    sys.exit(main())
